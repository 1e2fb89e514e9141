"""Mutual scoring (issue 13, eval/mutual_math.py and eval/mutual.py): hand-made feature sets, the blocked
scoring against a plain loop over the full distance matrix, PointAD's own back-projection and smoothing, and
`eval report --method mutual-scoring` on the synthetic store with the tiny random model (a smoke run: random
weights, 6 samples a class; its numbers say nothing about the method)."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import pointad.eval.mutual as mutual
import pointad.eval.score_maps as score_maps
import pointad.eval.scoring as scoring
import pointad.train.model.maps as maps
from pointad.eval.cli import eval_
from pointad.eval.mutual import attach_published, mutual_model_config, patch_scores, score_class
from pointad.eval.mutual_math import aggregate_neighbourhoods, block_sizes, kept_count, mutual_scores, rescore_by_neighbours
from pointad.eval.options import MutualOptions
from pointad.eval.report import Report, to_markdown
from pointad.shared.store import open_store
from pointad.train.model.backbone import load_backbone
from pointad.train.model.model_config import load_model_config

MVTEC, REAL3D = "synthetic-mvtec3d", "synthetic-real3d"
FAST = MutualOptions(radii=(1,), rescore_ks=())   # one radius: the store tests stay quick on CPU


# --- the math ------------------------------------------------------------------------------------------

def _scores_by_loop(features: np.ndarray, fraction: float) -> np.ndarray:
    """Test twin: every distance of the full (N T) x (N T) matrix, then per patch the loop over the others."""
    n, t, _ = features.shape
    flat = features.reshape(n * t, -1).astype(np.float64)
    full = np.sqrt(((flat[:, None] - flat[None]) ** 2).sum(-1)).reshape(n, t, n, t)
    keep = max(1, int(fraction * (n - 1)))
    out = np.zeros((n, t))
    for i in range(n):
        for p in range(t):
            nearest = sorted(full[i, p, j].min() for j in range(n) if j != i)
            out[i, p] = np.mean(nearest[:keep])
    return out


def test_an_isolated_patch_gets_the_top_score_and_duplicated_patches_zero():
    normal = np.eye(4, 6)                                # 4 normal patches, present in every sample
    features = np.repeat(normal[None], 6, axis=0)        # (6 samples, 4 patches, 6)
    odd = np.array([0, 0, 0, 0, 3.0, 4.0])               # one isolated patch, sample 2 patch 1
    features[2, 1] = odd
    scores = mutual_scores(torch.tensor(features, dtype=torch.float32)).numpy()
    assert np.unravel_index(scores.argmax(), scores.shape) == (2, 1)
    # its nearest patch in every other sample is a unit vector e_u: distance sqrt(1 + 25)
    assert scores[2, 1] == pytest.approx(np.sqrt(26.0), rel=1e-5)
    others = np.ones_like(scores, bool)
    others[2, 1] = False
    assert np.abs(scores[others]).max() < 1e-3          # every normal patch has exact copies elsewhere


def test_a_defect_shared_with_few_samples_still_scores_above_normal_patches():
    rng = np.random.default_rng(0)
    features = np.repeat(rng.normal(size=(1, 5, 8)), 11, axis=0) + rng.normal(scale=0.01, size=(11, 5, 8))
    features[[0, 1], 3] = 5.0                             # the same defect in 2 of 11 samples
    scores = mutual_scores(torch.tensor(features, dtype=torch.float32), fraction=0.3).numpy()
    # 3 of the 10 others are averaged: for samples 0 and 1 one of them holds the defect, two do not
    assert scores[0, 3] > 10 * np.delete(scores, 3, axis=1).max()
    with_all = mutual_scores(torch.tensor(features, dtype=torch.float32), fraction=0.1).numpy()
    assert with_all[0, 3] < 0.2                           # 1 of 10: the twin defect alone, so nearly normal


@pytest.mark.parametrize("seed, samples, fraction", [(0, 7, 0.3), (1, 5, 1.0), (2, 9, 0.05)])
def test_blocked_scores_equal_the_full_distance_matrix(seed, samples, fraction):
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(samples, 9, 5)).astype(np.float32)
    expected = _scores_by_loop(features, fraction)
    tokens = torch.from_numpy(features)
    for block_bytes in (1, 4 * 81 * 4, 4 * 81 * 9, 2**30):   # 1, 2, 3 samples a block, then all at once
        got = mutual_scores(tokens, fraction, block_bytes).numpy()
        worst = np.unravel_index(np.abs(got - expected).argmax(), got.shape)
        assert np.abs(got - expected).max() < 1e-4, f"block_bytes {block_bytes}: worst at {worst}"
    assert [block_sizes(9, samples, b) for b in (1, 4 * 81 * 4, 4 * 81 * 9)] == [1, 2, 3]
    first = mutual_scores(tokens, fraction, 4 * 81 * 4, queries=3).numpy()
    np.testing.assert_allclose(first, expected[:3], atol=1e-4)


def test_mutual_scoring_needs_two_samples():
    with pytest.raises(ValueError, match="at least 2 samples"):
        mutual_scores(torch.zeros(1, 4, 3))
    assert kept_count(2, 0.3) == 1 and kept_count(11, 0.3) == 3


def _aggregate_by_loop(patches: np.ndarray, radius: int) -> np.ndarray:
    n, t, d = patches.shape
    side = int(np.sqrt(t))
    out = np.zeros((n, t, d))
    for i in range(n):
        grid = patches[i].reshape(side, side, d).astype(np.float64)
        grid = (grid - grid.mean()) / np.sqrt(grid.var() + 1e-5)
        for row in range(side):
            for col in range(side):
                window = grid[max(0, row - radius // 2):row + radius // 2 + 1,
                              max(0, col - radius // 2):col + radius // 2 + 1]
                mean = window.reshape(-1, d).sum(axis=0) / radius ** 2   # zero padding counts
                out[i, row * side + col] = mean / np.linalg.norm(mean)
    return out


@pytest.mark.parametrize("radius", [1, 3, 5])
def test_neighbourhood_aggregation_matches_a_loop(radius):
    patches = np.random.default_rng(radius).normal(size=(2, 36, 4)).astype(np.float32)
    got = aggregate_neighbourhoods(torch.from_numpy(patches), radius).numpy()
    np.testing.assert_allclose(got, _aggregate_by_loop(patches, radius), atol=1e-5)
    with pytest.raises(ValueError, match="odd"):
        aggregate_neighbourhoods(torch.from_numpy(patches), 2)


def test_rescoring_pulls_a_sample_towards_its_look_alikes():
    scores = np.array([0.0, 0.1, 1.0, 0.9, 0.05])
    features = np.array([[1, 0], [1, 0.05], [0, 1], [0.05, 1], [1, 0.1]], float)
    assert np.allclose(rescore_by_neighbours(scores, torch.tensor(features), [1]).numpy(), scores / 1.0)
    got = rescore_by_neighbours(scores, torch.tensor(features), [2]).numpy()
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    similarity = np.clip(unit @ unit.T, 0, None)
    for i in range(5):                                      # twin: the two most similar, weighted
        near = np.argsort(-similarity[i], kind="stable")[:2]
        assert got[i] == pytest.approx((similarity[i, near] * scores[near]).sum() / similarity[i, near].sum())
    assert got[2] < scores[2] and got[1] < scores[1]       # high-scoring sample 2 pulled towards 3 (0.9)


def _rescore_by_loop(scores, features, ks):
    """Test twin of the re-scoring: plain loops, negative similarities weigh 0 (design of MuSc's step 3)."""
    scores = np.asarray(scores, float)
    normalised = (scores - scores.min()) / (scores.max() - scores.min())
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    out = np.zeros(len(scores))
    for i in range(len(scores)):
        similarity = [1.0 if j == i else max(0.0, float(unit[i] @ unit[j])) for j in range(len(scores))]
        for k in ks:
            nearest = sorted(range(len(scores)), key=lambda j: -similarity[j])[:min(k, len(scores))]
            weights = [similarity[j] for j in nearest]
            out[i] += sum(w * normalised[j] for w, j in zip(weights, nearest)) / sum(weights) / len(ks)
    return out


def test_rescoring_gives_negatively_similar_samples_no_weight():
    # sample 1 points away from sample 0 (cosine -1), sample 2 is orthogonal to both: with k = 3 each sample's
    # neighbourhood holds the others, but only itself has a positive weight, so nothing moves
    scores = np.array([0.0, 1.0, 0.5])
    features = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    np.testing.assert_allclose(rescore_by_neighbours(scores, features, [3]).numpy(), [0.0, 1.0, 0.5], atol=1e-12)
    # 0 and 1 are look-alikes (cosine 0.8), 2 points away from both: it keeps its own score whatever k
    features = torch.tensor([[1.0, 0.0], [0.8, 0.6], [-0.6, -0.8]], dtype=torch.float64)
    got = rescore_by_neighbours(scores, features, [2, 3]).numpy()
    assert got[2] == pytest.approx(0.5, abs=1e-12)
    assert got[0] == pytest.approx((1 * 0.0 + 0.8 * 1.0) / 1.8, abs=1e-12)   # itself and its look-alike 1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rescoring_matches_a_loop_with_negative_similarities(seed):
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(7, 3))                   # centred: about half the cosines are negative
    scores = rng.uniform(size=7)
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    assert (unit @ unit.T < -0.1).sum() >= 6, "the case must hold clearly negative similarities"
    for ks in ([1], [3], [7], [2, 5, 7]):
        got = rescore_by_neighbours(scores, torch.tensor(features), ks).numpy()
        expected = _rescore_by_loop(scores, features, ks)
        worst = np.abs(got - expected).argmax()
        assert np.abs(got - expected).max() < 1e-9, f"ks {ks}: sample {worst}: {got[worst]} != {expected[worst]}"


def _patch_scores_by_loop(tokens: np.ndarray, options: MutualOptions) -> np.ndarray:
    """Test twin of `patch_scores`: for every layer and radius, the aggregation and the mutual scores by loops
    (`_aggregate_by_loop`, `_scores_by_loop`), then the plain mean over the L x R maps."""
    layers, samples, views, tokens_count, _ = tokens.shape
    maps = []
    for layer in range(layers):
        for radius in options.radii:
            aggregated = np.stack([_aggregate_by_loop(tokens[layer, :, k], radius) for k in range(views)], axis=1)
            if options.views == "all":
                flat = aggregated.reshape(samples, views * tokens_count, -1)
                maps.append(_scores_by_loop(flat, options.fraction).reshape(samples, views, tokens_count))
            else:
                maps.append(np.stack([_scores_by_loop(aggregated[:, k], options.fraction) for k in range(views)], 1))
    return np.mean(maps, axis=0)


@pytest.mark.parametrize("views", ["same", "all"])
def test_patch_scores_are_the_mean_over_layers_and_radii(views):
    """Two layers and three radii: the patch score is the average of the six score maps, not their sum."""
    tokens = np.random.default_rng(7).normal(size=(2, 4, 2, 16, 3)).astype(np.float32)   # L, N, V, 4 x 4 grid, D
    options = MutualOptions(radii=(1, 3, 5), fraction=0.5, views=views, rescore_ks=())
    got = patch_scores(torch.from_numpy(tokens), options).numpy()
    expected = _patch_scores_by_loop(tokens, options)
    assert got.shape == (4, 2, 16)
    worst = np.unravel_index(np.abs(got - expected).argmax(), got.shape)
    assert np.abs(got - expected).max() < 1e-4, f"largest difference {np.abs(got - expected).max()} at {worst}"
    first = patch_scores(torch.from_numpy(tokens), options, queries=2).numpy()
    np.testing.assert_allclose(first, expected[:2], atol=1e-4)


# --- PointAD's back-projection, on the store ---------------------------------------------------------------

def test_the_point_maps_use_pointads_own_functions():
    for name in ("back_project_batch", "encode_batch", "rgb_on_grid"):
        assert getattr(mutual, name) is getattr(scoring, name)
    for module in (mutual, scoring):   # one scoring tail: smoothing, fusion and results in eval.score_maps alone
        assert module.score_row is score_maps.score_row and module.SampleScores is score_maps.SampleScores
        source = inspect.getsource(module)
        for name in ("smooth_organized(", "smooth_graph(", "rgb_point_map(", "fused_point_map(", "gaussian_filter(",
                     "SampleScores("):
            assert name not in source, f"{module.__name__} calls {name}) itself"


@pytest.fixture(scope="module")
def plain_tiny():
    return load_backbone(mutual_model_config(load_model_config("tiny")), seed=0)


def test_plain_attention_path_has_no_dual_blocks_and_says_so(plain_tiny):
    assert plain_tiny.config.dual_path_blocks == () and plain_tiny.label == "tiny (random weights), plain attention"
    assert mutual_model_config(load_model_config("tiny"), (2, 4)).tap_layers == (2, 4)


@pytest.mark.parametrize("dataset", [MVTEC, REAL3D])
@pytest.mark.slow
def test_point_scores_are_the_back_projected_view_maps(eval_store, plain_tiny, dataset):
    store = open_store(eval_store)
    rows = store.indices(dataset=dataset, class_name="torus", split="test")
    results = score_class(eval_store, rows, plain_tiny, FAST, keep_view_maps=True, compat=True)
    assert [r.identity["row"] for r in results] == rows.tolist()
    batch = store.read_batch(rows, scoring.BATCH_FIELDS)
    kept = torch.tensor(np.stack([r.view_maps for r in results]), dtype=torch.float32)
    raw = maps.back_project(kept, *(torch.from_numpy(batch[k]) for k in ("pixel", "visible", "valid", "proxy")))
    for i, result in enumerate(results):
        valid = batch["valid"][i]
        if dataset == MVTEC:
            expected = score_maps.smooth_organized(raw[i].numpy()[valid], batch["grid_index"][i][valid],
                                                batch["grid_hw"][i])
            assert result.has_rgb and result.compat is not None
            assert result.compat["point"][1] == pytest.approx(float(result.compat["point"][0].max()))
        else:
            expected = score_maps.smooth_graph(raw[i].numpy(), batch["knn"][i], batch["knn_weight"][i])[valid]
            assert not result.has_rgb and result.compat is None
        difference = np.abs(result.point_scores - expected)   # the kept maps are float16
        assert difference.max() < 2e-3 * max(1.0, float(np.abs(expected).max())), f"row {i}: {difference.max()}"
        assert result.score == pytest.approx(float(result.point_scores.max()), rel=1e-6)


# --- the report ------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_report_prints_the_methods_tables_labelled_as_a_smoke_run(eval_store, tmp_path):
    out = tmp_path / "report.json"
    result = CliRunner().invoke(eval_, ["report", "--store", str(eval_store), "--method", "mutual-scoring",
                                        "--model", "tiny", "--dataset", MVTEC, "--classes", "cookie", "--protocol",
                                        "both", "--compare-paper", "--mutual-radii", "1", "--rescore-k", "1",
                                        "--rescore-k", "2", "--device", "cpu", "--report-format", "json",
                                        "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["header"]["method"] == "mutual-scoring"
    assert data["header"]["model"] == "tiny (random weights), plain attention"
    assert data["header"]["training_classes"] == []
    paper = data["header"]["paper"]
    assert "no published mutual-scoring numbers known here for test dataset synthetic-mvtec3d" in paper
    cells = {(r["protocol"], r["block"], r["class"]) for r in data["rows"]}
    assert cells == {(p, b, c) for p in ("points", "pointad-compat") for b in ("point", "rgb", "multimodal")
                     for c in ("cookie", "mean")}
    assert all(0 <= r["I-AUROC"] <= 1 and 0 <= r["AUPRO"] <= 1 for r in data["rows"])


def test_compare_paper_shows_the_quoted_musc_v2_means_for_mvtec3d_only():
    report = Report(header={"model": "m", "method": "mutual-scoring", "setting": "one-vs-rest", "dataset": "mvtec3d",
                            "training_classes": [], "protocols": ["points"], "runs": 1},
                    blocks=("point", "rgb", "multimodal"), classes=["bagel"],
                    values={("points", "point", "mean"): {"i_auroc": [0.9]}})
    attach_published(report)
    md = to_markdown(report)
    assert "| **mean** | 90.0 | 88.1 | +1.9 |" in md and "issue 13" in report.header["paper"]
    assert report.paper["rgb"] is None and report.paper["multimodal"] is None
    report.header["dataset"] = "eyecandies"
    attach_published(report)
    assert not any(report.paper.values()) and "not transcribed" in report.header["paper"]


@pytest.mark.parametrize("args, message", [
    (["--checkpoints", "x"], "--method mutual-scoring uses no training; drop --checkpoints"),
    (["--mutual-radii", "2"], "--mutual-radii must be odd numbers >= 1, got [2]"),
    (["--mutual-fraction", "0"], "--mutual-fraction must be in (0, 1], got 0.0"),
])
def test_bad_options_are_one_line_errors(eval_store, args, message):
    result = CliRunner().invoke(eval_, ["report", "--store", str(eval_store), "--method", "mutual-scoring", "--model",
                                        "tiny", "--dataset", MVTEC, "--device", "cpu", *args])
    assert result.exit_code == 1 and f"Error: {message}" in result.output
