"""The run folder's records (train/run_record.py): config.json as `RunRecord`, metrics.csv as `EpochMetrics` rows.

Round trips, the layouts written before the record had a version (literal files, as that code wrote them),
and tampered files refused in one line naming the file and the key or line.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pointad.eval.runs import trained_runs_in
from pointad.shared.errors import PointADError
from pointad.train.model.model_config import load_model_config
from pointad.train.options import TrainConfig
from pointad.train.run_record import (
    REWRITE,
    EpochMetrics,
    ImportedFrom,
    RunRecord,
    RunRecordError,
    append_metrics,
    check_run_dir,
    read_metrics,
    read_run_record,
    write_run_record,
)

TINY = ('{"name": "tiny", "label": "tiny (random weights)", "open_clip_name": "pointad-tiny", "pretrained": null, '
        '"random_init": true, "quick_gelu": true, "image_size": 336, "dual_path_blocks": [2, 3, 4], '
        '"tap_layers": [2, 3, 4], "open_clip_config": {"embed_dim": 32, "quick_gelu": true, "vision_cfg": '
        '{"image_size": 336, "patch_size": 14, "layers": 4, "width": 64, "head_width": 16}, "text_cfg": '
        '{"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 4}}}')
# config.json as `train run` wrote it before the record (train/loop.py, commit 4507f32): no format, no version
OLD_RUN = """{
  "train": {"class_name": "cookie", "dataset": "synthetic-mvtec3d", "batch_size": 4, "lr": 0.001,
            "betas": [0.5, 0.999], "seed": 111, "model": "tiny", "layers": null, "dpam_start": null,
            "prompt": "agnostic", "loss_terms": "all", "feature_cache": true, "epochs": 2, "store": "renders.zarr"},
  "model": %s,
  "store_fingerprint": "5d41402abc4b2a76b9719d911017c592",
  "rows": [0, 1, 2, 3, 4, 5],
  "render": {"views": 3, "image_size": 336, "supersample": 1, "point_size": 2, "renderer": "splat"}
}""".replace("%s", TINY)
# ... and as `train import-released` wrote it (train/released.py, same commit)
OLD_IMPORTED = """{
  "train": {"class_name": "carrot", "dataset": "mvtec3d", "batch_size": 4, "lr": 0.001, "betas": [0.5, 0.999],
            "seed": 111, "model": "tiny", "layers": [2, 3, 4], "dpam_start": null, "prompt": "agnostic",
            "loss_terms": "all", "feature_cache": true, "epochs": 7, "store": ""},
  "model": %s,
  "store_fingerprint": "",
  "rows": [],
  "imported": {"file": "exps_2_12_4_mv9_mvtec_3d_336_4/carrot/epoch_7.pth", "sha256": "9f86d081884c7d65",
               "layout": "released PointAD {'prompt_learner': state dict}",
               "deep_prompts": "rounded to float16 as the released text encoder uses them",
               "dropped": {"token_prefix_pos": [1, 1, 1, 64], "tokenized_prompts_pos": [1, 1, 77]}}
}""".replace("%s", TINY)
# metrics.csv as the loop wrote it before the record: 6 digits, an undefined AUROC spelled nan
OLD_METRICS = ("epoch,total,3d_global,3d_local,2d_global,2d_local,point_auroc,seconds\n"
               "1,2.77259,0.693147,0.693147,0.693147,0.693147,nan,1.53412\n"
               "2,2.5,0.6,0.7,0.6,0.6,0.534211,1.40018\n")
HEADER = "epoch,total,3d_global,3d_local,2d_global,2d_local,point_auroc,seconds\n"


def _record(**changes) -> RunRecord:
    train = TrainConfig(store="renders.zarr", class_name="cookie", dataset="synthetic-mvtec3d", model="tiny",
                        epochs=2, layers=(2, 4), lr=0.25, cache_memory=2**20)
    return RunRecord(**{"train": train, "model": load_model_config("tiny"), "store_fingerprint": "abc",
                        "rows": (3, 1, 2), "render": {"views": 3, "light": 0.5}, **changes})


def _run_folder(tmp_path, config: str, name="run"):
    """A run folder holding `config` as its config.json and a checkpoint file (discovery only looks at its name)."""
    folder = tmp_path / name
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "epoch_2.pt").write_bytes(b"")
    (folder / "config.json").write_text(config)
    return folder


def _one_line(error, *parts) -> str:
    text = str(error.value) if hasattr(error, "value") else str(error)
    assert "\n" not in text, text
    for part in parts:
        assert part in text, (part, text)
    return text


# -- config.json --------------------------------------------------------------------------------------------

def test_record_round_trips_through_its_dict_and_its_file(tmp_path):
    record = _record()
    assert RunRecord.from_dict(record.to_dict()) == record
    write_run_record(tmp_path, record)
    assert read_run_record(tmp_path) == record
    stored = json.loads((tmp_path / "config.json").read_text())
    assert (stored["format"], stored["version"], stored["rows"], stored["train"]["layers"]) == ("pointad-run", 1,
                                                                                                [3, 1, 2], [2, 4])
    assert "cache_memory" not in stored["train"]  # memory, no part of a run
    assert record.train.cache_memory == TrainConfig.cache_memory
    imported = _record(store_fingerprint="", rows=(), render=None, imported=ImportedFrom(
        file="a.pth", sha256="00", layout="released", deep_prompts="float16", dropped={"token_prefix_pos": (1, 64)}))
    write_run_record(tmp_path, imported)
    assert read_run_record(tmp_path) == imported


def test_a_run_folder_written_before_the_record_reads(tmp_path):
    run = _run_folder(tmp_path / "runs", OLD_RUN)
    record = read_run_record(run)
    assert (record.train.class_name, record.train.epochs, record.train.betas, record.rows) == ("cookie", 2,
                                                                                               (0.5, 0.999),
                                                                                               (0, 1, 2, 3, 4, 5))
    assert record.model == load_model_config("tiny") and record.render["renderer"] == "splat"
    assert record.imported is None and record.version == 1
    check_run_dir(run)  # a run of ours: `train run --resume` may go on in it
    assert trained_runs_in(tmp_path / "runs") == ([run], "synthetic-mvtec3d")
    imported = read_run_record(_run_folder(tmp_path, OLD_IMPORTED, "imported"))
    assert imported.imported.dropped == {"token_prefix_pos": (1, 1, 1, 64), "tokenized_prompts_pos": (1, 1, 77)}
    assert (imported.train.store, imported.store_fingerprint, imported.rows, imported.render) == ("", "", (), None)


def test_an_older_layout_is_refused_in_one_line_saying_what_to_do(tmp_path):
    """Runs written before the store path was recorded (train/loop.py, commit e68c8e5) lack 'train.store'."""
    older = json.loads(OLD_RUN)
    del older["train"]["store"], older["render"]
    run = _run_folder(tmp_path / "runs", json.dumps(older))
    with pytest.raises(RunRecordError) as error:
        read_run_record(run)
    _one_line(error, f"{run / 'config.json'}: 'train': missing key(s) ['store']", REWRITE)
    with pytest.raises(PointADError) as error:  # eval report's discovery: the same line
        trained_runs_in(tmp_path / "runs")
    _one_line(error, f"{run / 'config.json'}: 'train': missing key(s) ['store']", REWRITE)


def _tampered(change):
    data = json.loads(OLD_RUN)
    change(data)
    return json.dumps(data)


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(notes="mine"), "unknown key(s) ['notes']"),
    (lambda d: d["train"].update(cache_memory=1), "'train': unknown key(s) ['cache_memory']"),
    (lambda d: d["train"].update(lr="0.001"), "'train.lr' must be float, got '0.001'"),
    (lambda d: d["train"].update(seed=True), "'train.seed' must be int, got True"),
    (lambda d: d.update(rows=[0, "1"]), "'rows[1]' must be int, got '1'"),
    (lambda d: d.update(rows=[-1]), "'rows' must each be in 0..1099511627776, got -1"),
    (lambda d: d["train"].pop("lr"), "'train': missing key(s) ['lr']"),
    (lambda d: d["model"].pop("tap_layers"), "'model': missing key(s) ['tap_layers']"),
    (lambda d: d.pop("store_fingerprint"), "missing key(s) ['store_fingerprint']"),
    (lambda d: d["train"].update(lr=float("nan")), "'train.lr' must be a finite number, got nan"),
    (lambda d: d["train"].update(betas=[0.5, float("inf")]), "'train.betas[1]' must be a finite number, got inf"),
    (lambda d: d["render"].update(light=float("-inf")), "'render.light' must be a finite number, got -inf"),
    (lambda d: d["train"].update(prompt="both"), "'train.prompt' must be one of agnostic, coop, got 'both'"),
    (lambda d: d["train"].update(epochs=0), "'train.epochs' must be in 1..100000, got 0"),
    (lambda d: d["model"].update(tap_layers=[3, 2]), "model config 'tiny': 'tap_layers' must be increasing"),
    (lambda d: d.update(version=2), "run record 'pointad-run' version 2; this version of pointad reads "
                                    "'pointad-run' version 1"),
    (lambda d: d.update(format="pointad-run", version="1"), "version '1'; this version of pointad reads"),
])
def test_a_tampered_config_json_is_one_line_naming_the_file_and_the_key(tmp_path, change, message):
    run = _run_folder(tmp_path, _tampered(change))
    with pytest.raises(RunRecordError) as error:
        read_run_record(run)
    _one_line(error, f"{run / 'config.json'}: ", message, REWRITE)
    assert error.value.ours
    with pytest.raises(RunRecordError) as error:  # `train run --out run` and `--resume`: refused before any work
        check_run_dir(run)
    _one_line(error, message)


def test_non_finite_spellings_of_the_json_file_itself_are_refused(tmp_path):
    for spelling in ("NaN", "Infinity", "1e999"):
        run = _run_folder(tmp_path, OLD_RUN.replace('"lr": 0.001', f'"lr": {spelling}'), spelling)
        with pytest.raises(RunRecordError) as error:
            read_run_record(run)
        _one_line(error, f"{run / 'config.json'}: 'train.lr' must be a finite number")


def test_someone_elses_config_json_is_not_a_run_and_is_never_overwritten(tmp_path):
    for text, reason in (("{", "unreadable run record"), ("[1, 2]", "not a run record (expected a mapping"),
                         ('{"lr": 3}', "not a run record (no 'train' settings)")):
        folder = tmp_path / "mine"
        folder.mkdir(exist_ok=True)
        (folder / "config.json").write_text(text)
        with pytest.raises(RunRecordError) as error:
            read_run_record(folder)
        _one_line(error, f"{folder / 'config.json'}: {reason}")
        assert not error.value.ours
        with pytest.raises(PointADError, match=r"mine: holds a config\.json that is not a training run's; choose"):
            check_run_dir(folder)
    with pytest.raises(RunRecordError) as error:
        read_run_record(tmp_path / "absent")
    _one_line(error, f"{tmp_path / 'absent' / 'config.json'}: missing; {REWRITE}")


def test_record_module_loads_no_torch_and_no_training_loop():
    code = "import sys, pointad.train.run_record\nprint(' '.join(sys.modules))"
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
                 .stdout.split())
    assert "pointad.train.run_record" in loaded
    assert sorted(loaded & {"torch", "pointad.train.loop", "pointad.train.cli", "pointad.train.losses"}) == []


# -- metrics.csv --------------------------------------------------------------------------------------------

def _row(epoch, **changes):
    losses = {"total": 2.0 / epoch, "3d_global": 0.1, "3d_local": 1 / 3, "2d_global": 0.7, "2d_local": 0.6}
    return EpochMetrics(**{"epoch": epoch, "losses": losses, "point_auroc": 0.625, "seconds": 1.5, **changes})


def test_metrics_round_trip_and_a_rerun_epoch_replaces_its_row(tmp_path):
    assert read_metrics(tmp_path) == []
    rows = [_row(1, point_auroc=None), _row(2), _row(3)]
    for row in rows:
        append_metrics(tmp_path, row)
    assert read_metrics(tmp_path) == rows  # exact: numbers are written in their shortest exact spelling
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines[0] + "\n" == HEADER and lines[1].split(",")[-2] == ""  # an undefined AUROC is empty
    again = _row(2, seconds=9.0)  # a kill between row and checkpoint: epoch 2 runs again
    append_metrics(tmp_path, again)
    assert read_metrics(tmp_path) == [rows[0], again]
    fewer = EpochMetrics(epoch=1, losses={"total": 1.0, "3d_local": 1.0}, seconds=0.5)
    (tmp_path / "metrics.csv").unlink()
    append_metrics(tmp_path, fewer)
    assert (tmp_path / "metrics.csv").read_text().splitlines()[0] == "epoch,total,3d_local,point_auroc,seconds"
    assert read_metrics(tmp_path) == [fewer]


def test_a_metrics_file_written_before_the_record_reads(tmp_path):
    (tmp_path / "metrics.csv").write_text(OLD_METRICS)
    rows = read_metrics(tmp_path)
    assert [(r.epoch, r.point_auroc, r.losses["total"]) for r in rows] == [(1, None, 2.77259), (2, 0.534211, 2.5)]
    append_metrics(tmp_path, _row(3))
    assert [r.epoch for r in read_metrics(tmp_path)] == [1, 2, 3]


@pytest.mark.parametrize("text, message", [
    ("loss\n1\n", "(no 'epoch' column)"),
    ("epoch,total,point_auroc,seconds,3d_local\n1,1,0.5,1,1\n", "(columns ['epoch', 'total', 'point_auroc', "
                                                                 "'seconds', '3d_local']; expected epoch, total"),
    ("epoch,total,2d_local,3d_local,point_auroc,seconds\n1,1,1,1,0.5,1\n", "(columns ['epoch', 'total', '2d_local'"),
    (HEADER + "1,1,1,1,1,1,0.5\n", "(line 2 has 8 columns in the header but not in the row)"),
    (HEADER + "1,1,1,1,1,1,0.5,1\nx,1,1,1,1,1,0.5,1\n", "(line 3, epoch: 'x' is not a number)"),
    (HEADER + "1,1,1,0.5x,1,1,0.5,1\n", "(line 2, 3d_local: '0.5x' is not a number)"),
    (HEADER + "1,nan,1,1,1,1,0.5,1\n", "(line 2, total: must be a finite number, got nan)"),
    (HEADER + "1,1,1,1,1,inf,0.5,1\n", "(line 2, 2d_local: must be a finite number, got inf)"),
    (HEADER + "1,1,1,1,1,1,,\n", "(line 2, seconds: '' is not a number)"),
    (HEADER + "1,1,1,1,1,1,1.5,1\n", "(line 2, point_auroc: must be in [0, 1], got 1.5)"),
    (HEADER + "0,1,1,1,1,1,0.5,1\n", "(line 2, epoch: must be in 1..100000, got 0)"),
    (HEADER + "2,1,1,1,1,1,0.5,1\n1,1,1,1,1,1,0.5,1\n", "(line 3: epoch 1 after epoch 2; one row per epoch, in order)"),
    (HEADER + "1,1,1,1,1,1,0.5,1\n1,1,1,1,1,1,0.5,1\n", "(line 3: epoch 1 after epoch 1"),
])
def test_a_tampered_metrics_file_is_one_line_naming_the_file_and_the_line(tmp_path, text, message):
    (tmp_path / "metrics.csv").write_text(text)
    with pytest.raises(PointADError) as error:
        read_metrics(tmp_path)
    _one_line(error, f"{tmp_path / 'metrics.csv'}: damaged metrics file {message}", "repair or delete it to resume")
    with pytest.raises(PointADError) as error:  # the writer reads first: never appends to a damaged file
        append_metrics(tmp_path, _row(5))
    _one_line(error, message)
    assert (tmp_path / "metrics.csv").read_text() == text


def test_a_folder_without_a_record_may_hold_only_run_files_and_our_metrics(tmp_path):
    folder = tmp_path / "run"
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "metrics.csv").write_text(OLD_METRICS)
    check_run_dir(folder)  # config.json moved away, as a refusal says: `--resume` writes it again
    (folder / "metrics.csv").write_text("epoch,accuracy\n1,0.9\n")
    with pytest.raises(PointADError, match=r"run: holds a metrics\.csv that is not a training run's; choose another"):
        check_run_dir(folder)

