"""`eval report` end to end on CPU with the tiny model, plus the streaming driver and per-class metrics.

One store holds two synthetic datasets in different formats (MVTec 3D-AD: organized with RGB; Real3D-AD:
unorganized, no RGB); one tiny run is trained for one epoch on the MVTec cookie class.
"""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import open3d as o3d
import pytest
from click.testing import CliRunner
from PIL import Image

from pointad.eval.class_metrics import BLOCKS, class_metrics
from pointad.eval.cli import eval_
from pointad.eval.report import Report, attach_paper, to_markdown, to_records
from pointad.eval.score_maps import SampleScores, compat_fused_map
from pointad.eval.scoring import score_store, score_store_runs
from pointad.shared.store import open_store
from pointad.train.loop import TrainConfig, train
from pointad.train.model.backbone import load_backbone
from pointad.train.model.model_config import load_model_config

MVTEC, REAL3D = "synthetic-mvtec3d", "synthetic-real3d"
LABEL = "tiny (random weights)"


@pytest.fixture(scope="session")
def cookie_run(eval_store, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("eval-run") / "run"
    train(TrainConfig(store=str(eval_store), class_name="cookie", dataset=MVTEC, model="tiny", epochs=1), run_dir)
    return run_dir


def _report(args, tmp_path, fmt="md"):
    out = tmp_path / f"report.{fmt}"
    result = CliRunner().invoke(eval_, ["report", *map(str, args), "--device", "cpu", "--report-format", fmt, "--out",
                                        str(out)])
    assert result.exit_code == 0, result.output
    return out.read_text()


def _md_rows(text):
    """{block heading: {class: [cells]}} of the markdown tables."""
    tables, heading = {}, None
    for line in text.splitlines():
        if line.startswith("## "):
            heading = line[3:]
            tables[heading] = {}
        elif heading and line.startswith("| ") and not line.startswith("| class"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            tables[heading][cells[0].strip("*")] = cells[1:]
    return tables


# --- the streaming driver -------------------------------------------------------------------------------------

def _tiny_scoring(eval_store, picks):
    """(store, rows, tiny backbone (seed 0), fixed text features); picks: (dataset, class, first n rows)."""
    store = open_store(eval_store)
    rows = np.concatenate([store.indices(dataset=d, class_name=c)[:n] for d, c, n in picks])
    backbone = load_backbone(load_model_config("tiny"), seed=0)
    return store, rows, backbone, backbone.encode_text(["normal object.", "damaged object."])


@pytest.mark.slow
def test_score_store_streams_the_same_scores_at_any_batch_size(eval_store):
    store, rows, backbone, text = _tiny_scoring(eval_store, [(MVTEC, "torus", 2), (REAL3D, "cookie", 2)])
    one = list(score_store(eval_store, rows, backbone, text, batch_size=1))
    three = list(score_store(eval_store, rows, backbone, text, batch_size=3))
    assert [r.identity["sample_id"] for r in one] == [store.identity(int(i))["sample_id"] for i in rows]
    for a, b, row in zip(one, three, rows):
        sample = store.sample(int(row))
        assert a.point_scores.shape == (sample.n_points,) and np.isfinite(a.point_scores).all()
        assert np.array_equal(a.point_labels, sample.label[sample.valid])
        assert abs(a.score - b.score) < 1e-5 and np.abs(a.point_scores - b.point_scores).max() < 1e-5
        assert a.organized == a.has_rgb == (a.identity["dataset"] == MVTEC)
        if a.has_rgb:
            assert a.multimodal_point_scores.shape == a.point_scores.shape
            assert abs(a.multimodal_score - b.multimodal_score) < 1e-5
            assert a.multimodal_score == pytest.approx(0.5 * (0.5 * (a.score + a.rgb_score)
                                                              + a.multimodal_point_scores.max()), abs=1e-6)


def test_prefetching_the_next_batch_changes_no_score_and_no_order(eval_store):
    store, rows, backbone, text = _tiny_scoring(eval_store, [(MVTEC, "dome", 3), (REAL3D, "dome", 2)])
    ahead = list(score_store_runs(eval_store, rows, backbone, [text], batch_size=2, prefetch=True))
    inline = list(score_store_runs(eval_store, rows, backbone, [text], batch_size=2, prefetch=False))
    assert [r[0].identity["row"] for r in ahead] == [int(r) for r in rows]
    for (a,), (b,) in zip(ahead, inline, strict=True):
        assert a.identity == b.identity and a.score == b.score
        assert np.array_equal(a.point_scores, b.point_scores) and np.array_equal(a.point_labels, b.point_labels)


@pytest.mark.slow
def test_rows_smoothed_on_threads_score_as_one_after_another(eval_store):
    from concurrent.futures import ThreadPoolExecutor
    from dataclasses import fields

    from pointad.eval.scoring import BATCH_FIELDS, score_batch
    store, rows, backbone, text = _tiny_scoring(eval_store, [(MVTEC, "torus", 3), (REAL3D, "torus", 2)])
    batch = store.read_batch([int(r) for r in rows], BATCH_FIELDS)
    identities = [store.identity(int(r)) for r in rows]
    options = dict(compat=True, keep_view_maps=[True] * len(rows))  # every optional output too
    with ThreadPoolExecutor(3) as pool:
        threaded = list(score_batch(batch, identities, backbone, text, pool=pool, **options))
    alone = list(score_batch(batch, identities, backbone, text, **options))
    assert [r.identity for r in threaded] == identities
    assert any(r.has_rgb for r in alone) and not all(r.organized for r in alone)
    for a, b in zip(threaded, alone, strict=True):
        for f in fields(SampleScores):
            x, y = getattr(a, f.name), getattr(b, f.name)
            if f.name == "compat":
                assert (x is None) == (y is None), f.name
                x, y = ({} if x is None else x), ({} if y is None else y)
                assert x.keys() == y.keys()
                assert all(np.array_equal(x[k][0], y[k][0]) and x[k][1] == y[k][1] for k in x), f.name
            elif isinstance(x, np.ndarray) or x is None:
                assert (x is None and y is None) or np.array_equal(x, y), f.name
            else:
                assert x == y, f.name


@pytest.mark.slow
def test_several_runs_share_one_vision_pass_and_score_as_alone(eval_store):
    _, rows, backbone, text = _tiny_scoring(eval_store, [(MVTEC, "torus", 3), (REAL3D, "torus", 2)])
    texts = [text, backbone.encode_text(["a flawless thing.", "a broken thing."])]
    together = list(score_store_runs(eval_store, rows, backbone, texts, batch_size=2))
    for k, text in enumerate(texts):
        alone = list(score_store(eval_store, rows, backbone, text, batch_size=2))
        for a, b in zip(alone, (per_row[k] for per_row in together)):
            assert a.identity == b.identity and a.score == b.score
            assert np.array_equal(a.point_scores, b.point_scores)
            assert a.multimodal_score == b.multimodal_score
    assert together[0][0].score != together[0][1].score  # the two prompts do differ


@pytest.mark.slow
def test_compat_scores_follow_the_released_formulas(eval_store):
    _, rows, backbone, text = _tiny_scoring(eval_store, [(MVTEC, "torus", 2), (REAL3D, "cookie", 1)])
    results = list(score_store(eval_store, rows, backbone, text, compat=True))
    assert results[2].compat is None  # unorganized: no grid
    for result in results[:2]:
        (point, point_score), (rgb, rgb_score), (fused, fused_score) = (result.compat[b] for b in BLOCKS)
        assert point.shape == rgb.shape == fused.shape == result.grid_hw
        assert np.allclose(fused, compat_fused_map(point, rgb), atol=1e-6)
        assert fused_score == pytest.approx(0.5 * (0.5 * (point_score + rgb_score) + fused.max()), abs=1e-6)
        view_mean = 2 * point_score - point.max()  # A_s = 1/2 (mean view probability + max map)
        assert 0 <= view_mean <= 1
        missing = np.ones(point.size, bool)
        missing[result.grid_index] = False
        assert point.ravel()[missing].max() > 0  # the Gaussian spreads scores into missing cells


# --- per-class metrics -------------------------------------------------------------------------------------------

def _sample(label, point_labels, scores, organized=True, compat_scores=None):
    """compat_scores: the released code's grid (2, n/2) (default: the point scores on the grid, a spare row)."""
    n = len(point_labels)
    compat = None
    if organized:
        grid = np.zeros((3, n // 2), np.float32)
        grid[:2] = np.reshape(scores if compat_scores is None else compat_scores, (2, n // 2))
        compat = {"point": (grid, float(grid.max()))}
    return SampleScores(identity={"label": label}, point_scores=np.asarray(scores, np.float32),
                        point_labels=np.asarray(point_labels, np.uint8), score=float(max(scores)),
                        grid_index=np.arange(n, dtype=np.int32) if organized else np.full(n, -1, np.int32),
                        grid_hw=(3, n // 2) if organized else (0, 0), compat=compat,
                        knn=np.stack([np.roll(np.arange(n), 1), np.roll(np.arange(n), -1)], 1).astype(np.int32))


@pytest.mark.parametrize("organized", [True, False])
def test_perfect_scores_give_one_everywhere_and_compat_needs_a_grid(organized):
    samples = [_sample(0, [0, 0, 0, 0], [0.1, 0.2, 0.1, 0.2], organized),
               _sample(1, [0, 1, 1, 0], [0.1, 0.9, 0.8, 0.2], organized)]
    assert class_metrics(samples, "point", "points") == {"i_auroc": 1.0, "ap": 1.0, "p_auroc": 1.0, "aupro": 1.0}
    compat = class_metrics(samples, "point", "pointad-compat")
    assert compat["i_auroc"] == 1.0
    assert (compat["p_auroc"] == 1.0) if organized else math.isnan(compat["p_auroc"])
    assert all(math.isnan(v) for v in class_metrics(samples, "rgb", "points").values())  # no RGB here


def test_compat_metrics_use_the_released_grid_maps_and_count_missing_cells():
    # points ranked perfectly; the released grids rank the second sample's defect below a missing cell
    samples = [_sample(0, [0, 0, 0, 0], [0.1, 0.2, 0.1, 0.2], compat_scores=[0.1, 0.2, 0.1, 0.2]),
               _sample(1, [0, 1, 1, 0], [0.1, 0.9, 0.8, 0.2], compat_scores=[0.1, 0.9, 0.8, 0.2])]
    samples[1].compat["point"][0][2, 0] = 0.95  # a missing cell (label 0) above both defect cells
    samples[1].compat["point"] = (samples[1].compat["point"][0], 0.95)
    assert class_metrics(samples, "point", "points")["p_auroc"] == 1.0
    compat = class_metrics(samples, "point", "pointad-compat")
    # 2 anomalous cells, 10 normal cells (6 + 4 in grids with a spare row), one normal cell above both
    assert compat["p_auroc"] == pytest.approx(1 - 2 / (2 * 10))
    assert compat["i_auroc"] == 1.0


def test_several_runs_give_mean_and_std():
    report = Report(header={"protocols": ["points"], "dataset": "d", "model": LABEL, "method": "pointad",
                            "setting": "one-vs-rest", "training_classes": ["a", "b"], "runs": 2},
                    blocks=("point",), classes=["c"],
                    values={("points", "point", "c"): {"i_auroc": [0.5, 0.7], "ap": [0.9, math.nan],
                                                       "p_auroc": [], "aupro": [0.2, 0.2]}})
    assert report.cell("points", "point", "c", "i_auroc") == pytest.approx((0.6, 0.1, 2))
    assert _md_rows(to_markdown(report))["point (points)"]["c"] == ["60.0 ± 10.0", "90.0", "n/a", "20.0 ± 0.0"]


# --- eval report end to end ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_one_vs_rest_in_md_csv_json(eval_store, cookie_run, tmp_path):
    args = ["--store", eval_store, "--checkpoints", cookie_run, "--dataset", MVTEC, "--setting", "one-vs-rest"]
    md = _report(args, tmp_path, "md")
    assert f"model: {LABEL}" in md and "training class(es): cookie" in md and "protocol: points" in md
    tables = _md_rows(md)
    assert list(tables) == ["point (points)", "rgb (points)", "multimodal (points)"]
    for rows in tables.values():
        assert list(rows) == ["torus", "mean"]  # every class but the training one
        for cells in rows.values():
            assert len(cells) == 4 and all(0 <= float(c) <= 100 for c in cells), cells

    records = list(csv.DictReader(_report(args, tmp_path, "csv").splitlines()))
    assert {(r["block"], r["class"]) for r in records} == {(b, c) for b in ("point", "rgb", "multimodal")
                                                          for c in ("torus", "mean")}
    assert all(r["model"] == LABEL and 0 <= float(r["AUPRO"]) <= 1 for r in records)

    data = json.loads(_report(args, tmp_path, "json"))
    assert data["header"]["model"] == LABEL and data["header"]["training_classes"] == ["cookie"]
    assert all(math.isfinite(row[m]) for row in data["rows"] for m in ("I-AUROC", "AP", "P-AUROC", "AUPRO"))


@pytest.mark.slow
def test_cross_dataset_scores_every_class_without_rgb_blocks_for_real3d(eval_store, cookie_run, tmp_path):
    md = _report(["--store", eval_store, "--checkpoints", cookie_run, "--dataset", REAL3D,
                  "--setting", "cross-dataset", "--protocol", "both"], tmp_path)
    tables = _md_rows(md)
    assert list(tables) == ["point (points)", "point (pointad-compat)"]  # no RGB in Real3D-AD
    assert list(tables["point (points)"]) == ["cookie", "torus", "mean"]
    assert all(0 <= float(c) <= 100 for cells in tables["point (points)"].values() for c in cells)
    # unorganized clouds have no grid for the compat protocol's point metrics
    assert tables["point (pointad-compat)"]["cookie"][2:] == ["n/a", "n/a"]


@pytest.mark.slow
def test_two_runs_report_mean_and_std(eval_store, cookie_run, tmp_path):
    checkpoint = cookie_run / "checkpoints" / "epoch_1.pt"
    md = _report(["--store", eval_store, "--checkpoints", cookie_run, "--checkpoints", checkpoint, "--dataset",
                  MVTEC, "--classes", "torus"], tmp_path)
    assert "runs: 2" in md
    assert all(c.endswith("± 0.0") for c in _md_rows(md)["point (points)"]["torus"])  # the same run twice


@pytest.mark.slow
def test_clip_rendering_baseline_needs_no_checkpoints(eval_store, tmp_path):
    data = json.loads(_report(["--store", eval_store, "--method", "clip-rendering", "--model", "tiny",
                               "--dataset", MVTEC, "--setting", "cross-dataset"], tmp_path, "json"))
    assert data["header"]["model"] == LABEL and data["header"]["training_classes"] == []
    assert {(r["block"], r["class"]) for r in data["rows"]} == {(b, c) for b in ("point", "rgb", "multimodal")
                                                               for c in ("cookie", "torus", "mean")}


@pytest.mark.parametrize("args, message", [
    (["--dataset", MVTEC], "no --checkpoints and no runs folder 'runs' here"),
    (["--dataset", "absent", "--method", "clip-rendering", "--model", "tiny"], "no dataset 'absent'"),
    (["--dataset", MVTEC, "--method", "clip-rendering", "--model", "tiny", "--classes", "cup"],
     "no test class(es) ['cup']"),
    (["--dataset", MVTEC, "--method", "clip-rendering", "--model", "tiny", "--figures", "f", "--figure-sample", "a/b"],
     "has no test sample a/b (--figure-sample)"),
])
def test_errors_are_one_line(eval_store, args, message):
    result = CliRunner().invoke(eval_, ["report", "--store", str(eval_store), "--device", "cpu", *args])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], result.output


def test_a_run_directory_without_checkpoints_is_an_error(eval_store, tmp_path):
    result = CliRunner().invoke(eval_, ["report", "--store", str(eval_store), "--checkpoints", str(tmp_path),
                                        "--dataset", MVTEC, "--device", "cpu"])
    assert result.exit_code == 1 and "no checkpoints/epoch_*.pt" in result.output, result.output


def test_coop_prompts_score_each_class_by_its_name():
    from pointad.eval.runs import prompt_features
    from pointad.train.model.prompts import PromptLearner
    backbone = load_backbone(load_model_config("tiny"), seed=0)
    features = prompt_features(PromptLearner.for_backbone(backbone, variant="coop", class_names=["cookie"]), backbone)
    torus, cookie = features("torus"), features("cookie")
    assert torus.shape == (2, backbone.embed_dim) and (torus - cookie).abs().max() > 1e-4
    agnostic = prompt_features(PromptLearner.for_backbone(backbone), backbone)
    assert agnostic.shape == (2, backbone.embed_dim)


@pytest.mark.slow
def test_runs_dir_reports_missing_runs_then_train_missing_reproduces_the_setting(eval_store, tmp_path):
    runs_dir = tmp_path / "runs"
    setting = ["--store", str(eval_store), "--dataset", MVTEC, "--runs-dir", str(runs_dir), "--train-classes",
               "cookie", "--seeds", "1", "--seeds", "2", "--device", "cpu", "--classes", "torus"]
    missing = CliRunner().invoke(eval_, ["report", *setting])
    assert missing.exit_code == 1, missing.output
    assert f"no trained run {MVTEC}-cookie-1, {MVTEC}-cookie-2; add --train-missing" in missing.output
    assert not runs_dir.exists()

    trained = CliRunner().invoke(eval_, ["report", *setting, "--train-missing", "--model", "tiny", "--train-epochs", "1"])
    assert trained.exit_code == 0, trained.output
    assert "runs: 2" in trained.output and "training class(es): cookie" in trained.output
    assert all((runs_dir / f"{MVTEC}-cookie-{s}" / "checkpoints" / "epoch_1.pt").is_file() for s in (1, 2))
    again = CliRunner().invoke(eval_, ["report", *setting])  # the runs are there now: no training
    assert again.exit_code == 0, again.output
    assert _md_rows(again.output) == _md_rows(trained.output)
    # seeds give the tiny model other random weights, so the two runs differ
    assert not _md_rows(again.output)["point (points)"]["torus"][0].endswith("± 0.0")


# --- the paper's numbers and figures ---------------------------------------------------------------------------

def _one_class_report(dataset, setting, values, prompts=("agnostic",), trained_on="mvtec3d", name="cable_gland"):
    header = {"protocols": ["points"], "dataset": dataset, "model": "ViT-L-14-336", "method": "pointad",
              "setting": setting, "training_classes": ["carrot"], "training_datasets": [trained_on],
              "prompts": list(prompts), "runs": 1}
    metrics = ("i_auroc", "ap", "p_auroc", "aupro")
    return Report(header=header, blocks=("point",), classes=[name],
                  values={("points", "point", n): {m: [v] for m, v in zip(metrics, values)} for n in (name, "mean")})


@pytest.mark.parametrize("prompts, paper_i_auroc", [(("agnostic",), "53.7"), (("coop",), "53.8")])
def test_compare_paper_puts_the_published_value_and_the_difference_beside_ours(prompts, paper_i_auroc):
    # Table 18, cable gland: PointAD (53.7, 86.0 | 93.5, 79.5), PointAD-CoOp (53.8, 85.7 | 93.3, 78.5)
    report = attach_paper(_one_class_report("mvtec3d", "one-vs-rest", [0.5, 0.9, 0.95, 0.7], prompts))
    md = to_markdown(report)
    assert "paper: PointAD paper, Table 18 (point)" in md
    cells = _md_rows(md)["point (points)"]["cable_gland"]
    assert cells[:3] == ["50.0", paper_i_auroc, f"{50.0 - float(paper_i_auroc):+.1f}"]
    if prompts == ("agnostic",):
        assert cells[3:] == ["90.0", "86.0", "+4.0", "95.0", "93.5", "+1.5", "70.0", "79.5", "-9.5"]
    record = next(r for r in to_records(report) if r["class"] == "cable_gland")
    assert record["I-AUROC paper"] == pytest.approx(float(paper_i_auroc) / 100)
    assert record["I-AUROC diff"] == pytest.approx(0.5 - float(paper_i_auroc) / 100)


def test_compare_paper_marks_what_the_paper_does_not_publish():
    # Table 25 (MVTec3D-AD -> Real3D-AD) has no AUPRO; the paper has no synthetic data at all
    report = attach_paper(_one_class_report("real3d", "cross-dataset", [0.6, 0.6, 0.6, 0.6], name="shell"))
    assert _md_rows(to_markdown(report))["point (points)"]["shell"][9:] == ["60.0", "-", "-"]
    none = attach_paper(_one_class_report("synthetic", "one-vs-rest", [0.6, 0.6, 0.6, 0.6]))
    md = to_markdown(none)
    assert "the paper publishes no table for method pointad, setting one-vs-rest, test dataset synthetic" in md
    assert len(_md_rows(md)["point (points)"]["cable_gland"]) == 4  # no comparison columns
    assert json.loads(json.dumps(to_records(none)))[0]["AUPRO paper"] is None


@pytest.mark.slow
def test_figures_of_each_class(eval_store, cookie_run, tmp_path):
    figures = tmp_path / "figures"
    _report(["--store", eval_store, "--checkpoints", cookie_run, "--dataset", MVTEC, "--figures", figures,
             "--figure-samples", "1"], tmp_path)
    store = open_store(eval_store)
    rows = store.indices(dataset=MVTEC, class_name="torus", split="test")
    good = next(store.sample(int(r)) for r in rows if store.identity(int(r))["label"] == 0)
    bad = next(store.sample(int(r)) for r in rows if store.identity(int(r))["label"] == 1)
    stems = {s.sample_id: s.sample_id.removesuffix(".tiff").replace("/", "_") for s in (good, bad)}
    expected = {"roc.png", "pro.png"} | {f"{stem}_{kind}" for stem in stems.values()
                                        for kind in ("views.png", "rgb.png", "point.ply", "multimodal.ply")}
    assert {p.name for p in (figures / "torus").iterdir()} == expected
    assert not (figures / "cookie").exists()  # the training class is not tested
    cloud = o3d.io.read_point_cloud(str(figures / "torus" / f"{stems[bad.sample_id]}_point.ply"))
    assert len(cloud.points) == bad.n_points
    assert np.allclose(np.asarray(cloud.points), bad.xyz[bad.valid], atol=1e-6)
    assert np.ptp(np.asarray(cloud.colors)[:, 0]) > 0.5  # colours span the class's score range
    with Image.open(figures / "torus" / f"{stems[bad.sample_id]}_views.png") as sheet:
        assert sheet.format == "PNG"
        assert len(np.unique(np.asarray(sheet.convert("RGB")).reshape(-1, 3), axis=0)) > 100


@pytest.mark.slow
def test_figures_of_an_unorganized_class_have_no_rgb_and_chosen_samples(eval_store, cookie_run, tmp_path):
    store = open_store(eval_store)
    chosen = store.identity(int(store.indices(dataset=REAL3D, class_name="cookie", split="test")[-1]))["sample_id"]
    figures = tmp_path / "figures"
    _report(["--store", eval_store, "--checkpoints", cookie_run, "--dataset", REAL3D, "--setting", "cross-dataset",
             "--classes", "cookie", "--figures", figures, "--figure-sample", chosen, "--compare-paper"], tmp_path)
    stem = chosen.removesuffix(".pcd").replace("/", "_")
    assert {p.name for p in (figures / "cookie").iterdir()} == {"roc.png", "pro.png", f"{stem}_views.png",
                                                                f"{stem}_point.ply"}


def test_names_from_data_cannot_forge_lines_or_columns_in_the_markdown():
    # a class name with a newline, a bidi override and a '|', a dataset name with an ANSI escape
    hostile = "evil\n| forged | row |\u202e"
    report = Report(header={"protocols": ["points"], "dataset": "d\x1b[2J", "model": LABEL, "method": "pointad",
                            "setting": "one-vs-rest", "training_classes": ["a\nb"], "runs": 1},
                    blocks=("point",), classes=[hostile],
                    values={("points", "point", hostile): {"i_auroc": [0.5], "ap": [0.9], "p_auroc": [0.7],
                                                           "aupro": [0.2]}})
    md = to_markdown(report)
    assert "\x1b" not in md and "\u202e" not in md and "forged" not in md.split("evil")[0]
    rows = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| class")]
    assert len(rows) == 2  # the class and the mean, one line each
    assert rows[0].count(" | ") == 4 and rows[0].startswith(r"| evil\n\| forged \| row \|\u202e | 50.0")
    assert md.splitlines()[0] == r"# PointAD evaluation: d\x1b[2J"
    assert r"training class(es): a\nb |" in md
