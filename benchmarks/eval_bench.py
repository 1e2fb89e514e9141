"""Time AU-PRO on 100 organized 336 x 336 maps (both protocols, ours against a per-threshold loop) and the
full `eval report` on a synthetic store, all in one run (design §9).

Run: .venv/bin/python benchmarks/eval_bench.py [--maps 100] [--repeats 3] [--loop-maps 2]
     [--compat-loop-maps 100] [--no-report | --workdir DIR --classes cookie dowel torus --views 9
     --test-good 2 --per-defect 1 --report-repeats 3 --batch-size 4 --device cpu] [--no-aupro]
     [--no-share | --share-model tiny|vit-l-random --share-runs 3 --share-samples 8]

Part 1, AU-PRO. Maps: an elliptic object footprint per map (about 60 % of the grid) with 2 % sensor
dropouts inside, the rest missing; ~30 % normal maps, the others with 2-5 elliptic defects; scores = smooth
noise plus a blurred bump over each defect, float32. Per protocol, ours against its naive twin in
eval/metrics.py (the per-threshold loop the tests compare it with) on the same maps in the same run
(seconds are the sum over the same calls; the loop once, ours the median of --repeats); the agreement
column is the largest |ours - loop| over every call: the maps pooled and each map with defects alone.
- ``points`` (`aupro_organized`) against `aupro_organized_naive` (every distinct score a threshold, overlaps
  region by region): its cost grows with thresholds x pixels, so it runs on --loop-maps maps with defects
  (pooled, then each alone); the official MVTec AD method (written here from its description: per-pixel
  FPR/PRO increments, one full descending argsort, cumulative sums, last point of each tie group,
  trapezoid cut at 0.3), fed the same valid pixels, is the baseline on all maps.
- ``pointad-compat`` (`aupro_pointad_compat`, on the full grids: missing = score 0, label 0) against
  `aupro_pointad_compat_naive`, the released definition literally (200 thresholds x maps x regions): on the first
  --compat-loop-maps maps pooled (all by default), then each of the --loop-maps maps above alone.

Part 2, `eval report` end to end (skip with --no-report). The built-in synthetic generator (MVTec 3D-AD
format, seed 0, as the registry's `synthetic` entry) writes --classes with --test-good good and
--per-defect samples per defect each; their test split is rendered into a store and the tiny model is
trained for one epoch on the first class, as tests/eval/test_report.py does. All of it goes to --workdir
(reused when it exists, so reruns skip the build) or a temporary folder. Then `build_report` +
`write_report` (markdown) are timed for one-vs-rest with protocol `points`, with protocol `both`, and the
clip-rendering baseline (after one untimed warm-up report, the three take turns --report-repeats times;
medians). The time inside `score_store_runs` (reading the store, the model, back-projection, smoothing) and
inside `class_metrics` is measured by wrapping the two names that `eval.report` calls, in this process
only (product code unchanged); the rest is model, checkpoint and prompt loading and writing. The tiny
model has random weights: these are smoke-scale timings, not the ViT-L/14@336 cost.

Part 3, several runs of one model (skip with --no-share): --share-runs text features scored over the
first --share-samples test rows of that store, once with one `score_store` per run (the vision tower
per run) and once with `score_store_runs` (one vision pass per batch, as `eval report` does); the
scores must be identical. --share-model vit-l-random is ViT-L-14-336 with random weights: the real
model's cost without its weights.

Part 4, mutual scoring (skip with --no-mutual; issue 13): one blocked `mutual_scores` call on synthetic
features of --mutual-sizes samples (default 50 100 200) x --mutual-tokens patches x --mutual-dim, on
--device: seconds, seconds per sample and peak memory (torch's GPU allocator peak, or the process RSS
sampled every 2 ms on CPU).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from bisect import bisect_right
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from scipy import ndimage

from pointad.eval.metrics import (
    aupro_organized,
    aupro_organized_naive,
    aupro_pointad_compat,
    aupro_pointad_compat_naive,
)

DATASET = "synthetic"  # the generated folder's name, so the dataset reads as the registry's built-in one


def make_maps(count: int = 100, size: int = 336, normal_fraction: float = 0.3, seed: int = 0):
    """masks (N, S, S) uint8, scores (N, S, S) float32, valid (N, S, S) bool, as described in the module doc."""
    rng = np.random.default_rng(seed)
    rows, cols = np.ogrid[:size, :size]
    masks = np.zeros((count, size, size), np.uint8)
    scores = np.zeros((count, size, size), np.float32)
    valid = np.zeros((count, size, size), bool)
    anomalous_maps = rng.permutation(count)[: round(count * (1 - normal_fraction))]
    for i in range(count):
        cy, cx = size / 2 + rng.normal(0, 8, 2)
        ry, rx = rng.uniform(0.38, 0.47, 2) * size
        footprint = ((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2 <= 1
        valid[i] = footprint & (rng.random((size, size)) > 0.02)
        if i in anomalous_maps:
            for _ in range(rng.integers(2, 6)):
                by, bx = cy + rng.uniform(-0.7, 0.7) * ry, cx + rng.uniform(-0.7, 0.7) * rx
                ay, ax = rng.uniform(3, 25, 2)
                masks[i][((rows - by) / ay) ** 2 + ((cols - bx) / ax) ** 2 <= 1] = 1
        noise = ndimage.gaussian_filter(rng.standard_normal((size, size)), 4)
        bump = ndimage.gaussian_filter(masks[i].astype(float), 5) * rng.uniform(0.5, 1.5)
        scores[i] = 0.5 * noise / noise.std() + 2.0 * bump
    return masks, scores, valid


def aupro_mvtec_official(masks, scores, valid, max_fpr=0.3):
    """The official MVTec AD AU-PRO method (full sort), with missing pixels weighing nothing."""
    fp_changes = np.zeros(masks.shape, np.uint32)
    pro_changes = np.zeros(masks.shape, np.float64)
    n_ok = n_regions = 0
    for i in range(len(masks)):
        labelled, count = ndimage.label(masks[i] != 0, structure=np.ones((3, 3)))
        ok = (labelled == 0) & valid[i]
        fp_changes[i][ok] = 1
        n_ok += int(ok.sum())
        for r in range(1, count + 1):
            region = (labelled == r) & valid[i]
            size = int(region.sum())
            if size:
                pro_changes[i][region] = 1.0 / size
                n_regions += 1
    flat = np.where(valid, scores, 0).ravel()
    order = np.argsort(flat)[::-1]
    ordered = flat[order]
    fprs = np.cumsum(fp_changes.ravel()[order]).astype(np.float32) / n_ok
    pros = np.cumsum(pro_changes.ravel()[order]) / n_regions
    last_of_ties = np.append(np.diff(ordered) != 0, True)
    x = np.concatenate([[0.0], fprs[last_of_ties], [1.0]])
    y = np.concatenate([[0.0], pros[last_of_ties], [1.0]])
    correction = 0.0
    if max_fpr not in x:
        ins = bisect_right(x, max_fpr)
        y_at = y[ins - 1] + (y[ins] - y[ins - 1]) * (max_fpr - x[ins - 1]) / (x[ins] - x[ins - 1])
        correction = 0.5 * (y_at + y[ins - 1]) * (max_fpr - x[ins - 1])
    inside = x <= max_fpr
    x, y = x[inside], y[inside]
    return float((np.sum(0.5 * (y[1:] + y[:-1]) * (x[1:] - x[:-1])) + correction) / max_fpr)


def timed(fn, repeats: int):
    """(median seconds, last value) over repeats."""
    times, value = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), value


def versus_loop(ours, loop, calls, repeats: int):
    """Run `ours` and `loop` on the same argument tuples: (ours s, loop s, ours values, loop values, max |diff|).

    Seconds are the sum over the calls (ours: median of repeats, the loop once); values in call order.
    """
    ours_s, ours_values = timed(lambda: [ours(*args) for args in calls], repeats)
    loop_s, loop_values = timed(lambda: [loop(*args) for args in calls], 1)
    diff = max(abs(a - b) for a, b in zip(ours_values, loop_values))
    return ours_s, loop_s, ours_values, loop_values, diff


def aupro_part(args) -> None:
    """Print part 1's table (module docstring)."""
    masks, scores, valid = make_maps(args.maps)
    full_masks = np.where(valid, masks, 0)  # what the released evaluation sees: missing = label 0, score 0
    full_scores = np.where(valid, scores, 0).astype(np.float32)
    with_defects = np.flatnonzero((masks != 0).any(axis=(1, 2)))[: args.loop_maps]
    alone = [slice(i, i + 1) for i in with_defects]

    ours_s, ours = timed(lambda: aupro_organized(masks, scores, valid), args.repeats)
    official_s, official = timed(lambda: aupro_mvtec_official(masks, scores, valid), args.repeats)
    points_calls = [(masks[s], scores[s], valid[s]) for s in [with_defects, *alone]]
    p_ours_s, p_loop_s, p_ours, p_loop, p_diff = versus_loop(aupro_organized, aupro_organized_naive, points_calls,
                                                             args.repeats)
    first = slice(0, args.compat_loop_maps)
    compat_calls = [(full_masks[s], full_scores[s]) for s in [first, *alone]]
    c_ours_s, c_loop_s, c_ours, c_loop, c_diff = versus_loop(aupro_pointad_compat, aupro_pointad_compat_naive,
                                                             compat_calls, args.repeats)

    k = len(alone)
    print(f"## AU-PRO: {args.maps} organized maps of {masks.shape[1]}x{masks.shape[2]}")
    print()
    print(f"{int((masks != 0).any(axis=(1, 2)).sum())} maps with defects, {valid.mean():.1%} of pixels valid, "
          f"{(masks != 0)[valid].mean():.2%} of valid pixels anomalous; ours: median of {args.repeats} runs, "
          f"loops: once. 'max abs diff' is against the row above it, over every call of the row.")
    print()
    print("| protocol | AU-PRO computation | maps per call | seconds | ours faster by | AU-PRO (first call) "
          "| max abs diff |")
    print("|---|---|---|---:|---:|---:|---:|")
    print(f"| points | ours (`aupro_organized`) | {args.maps} | {ours_s:.3f} | | {ours:.6f} | |")
    print(f"| points | official MVTec AD method (full argsort) | {args.maps} | {official_s:.3f} | "
          f"{official_s / ours_s:.1f}x | {official:.6f} | {abs(ours - official):.1e} |")
    print(f"| points | ours (`aupro_organized`) | {k} pooled, then {k} x 1 | {p_ours_s:.4f} | | {p_ours[0]:.6f} | |")
    print(f"| points | per-threshold loop, every distinct score (naive twin `aupro_organized_naive`) | {k} pooled, then "
          f"{k} x 1 | {p_loop_s:.2f} | {p_loop_s / p_ours_s:.0f}x | {p_loop[0]:.6f} | {p_diff:.1e} |")
    print(f"| pointad-compat | ours (`aupro_pointad_compat`, full grid) | {len(compat_calls[0][0])} pooled, then "
          f"{k} x 1 | {c_ours_s:.3f} | | {c_ours[0]:.6f} | |")
    print(f"| pointad-compat | per-threshold loop, 200 thresholds (naive twin `aupro_pointad_compat_naive`) | "
          f"{len(compat_calls[0][0])} pooled, then {k} x 1 | {c_loop_s:.1f} | {c_loop_s / c_ours_s:.0f}x | "
          f"{c_loop[0]:.6f} | {c_diff:.1e} |")
    print()


# --- part 2: eval report on a synthetic store ------------------------------------------------------------

def synthetic_run(workdir: Path, args) -> tuple[Path, Path, list[tuple[str, float]]]:
    """(store, run dir, [(step, seconds)]): generate, render and train what `workdir` does not hold yet."""
    from pointad.render import synthetic
    from pointad.render.build import build_store
    from pointad.render.datasets import open_dataset
    from pointad.render.options import RenderOptions
    from pointad.shared.store import open_store
    from pointad.train.loop import TrainConfig, train
    from pointad.train.model.checkpoint import latest_checkpoint

    steps = []
    spec = synthetic.SyntheticSpec(format="mvtec3d", seed=0, classes=tuple(args.classes), train=1, validation=1,
                                   test_good=args.test_good, per_defect=args.per_defect)
    root = workdir / DATASET
    manifest = root / synthetic.MANIFEST
    if manifest.exists():
        made = json.loads(manifest.read_text())
        made.pop("version", None)
        if synthetic.SyntheticSpec.from_dict(made) != spec:
            raise SystemExit(f"{root}: generated with other settings ({made}); use another --workdir")
    else:
        start = time.perf_counter()
        synthetic.generate(root, spec)
        steps.append((f"generate {DATASET} ({', '.join(args.classes)})", time.perf_counter() - start))
    store = workdir / "renders.zarr"
    start = time.perf_counter()
    options = RenderOptions(views=args.views, image_size=336, supersample=1, point_size=2)
    result = build_store(open_dataset(format="mvtec3d", root=root), store, options, splits=["test"])
    if result.failures:
        raise SystemExit(f"{store}: {len(result.failures)} sample(s) failed to render, first: {result.failures[0]}")
    if result.rendered:
        steps.append((f"render {result.rendered} test samples, {args.views} views", time.perf_counter() - start))
    run_dir = workdir / f"run-{args.classes[0]}"
    if latest_checkpoint(run_dir) is None:
        start = time.perf_counter()
        train(TrainConfig(store=str(store), class_name=args.classes[0], dataset=DATASET, model="tiny", epochs=1),
              run_dir, device=args.device)
        rows = len(open_store(store).indices(dataset=DATASET, class_name=args.classes[0]))
        steps.append((f"train tiny, 1 epoch on {args.classes[0]} ({rows} samples)", time.perf_counter() - start))
    return store, run_dir, steps


@contextmanager
def stage_clock():
    """Yield {"scoring", "metrics": seconds, "samples", "metric_calls": counts} filled while `eval.report` runs.

    Wraps the two names `eval.report` calls, `score_store_runs` and `class_metrics`, in this process only;
    the originals are restored on exit. Product code is not changed.
    """
    import pointad.eval.report as report

    spent = {"scoring": 0.0, "metrics": 0.0, "samples": 0, "metric_calls": 0}
    score_store_runs, class_metrics = report.score_store_runs, report.class_metrics

    def timed_score_store_runs(*a, **kw):
        results = score_store_runs(*a, **kw)
        while True:
            start = time.perf_counter()
            try:
                item = next(results)
            except StopIteration:
                return
            finally:
                spent["scoring"] += time.perf_counter() - start
            spent["samples"] += 1
            yield item

    def timed_class_metrics(*a, **kw):
        start = time.perf_counter()
        try:
            return class_metrics(*a, **kw)
        finally:
            spent["metrics"] += time.perf_counter() - start
            spent["metric_calls"] += 1

    report.score_store_runs, report.class_metrics = timed_score_store_runs, timed_class_metrics
    try:
        yield spent
    finally:
        report.score_store_runs, report.class_metrics = score_store_runs, class_metrics


def time_reports(configs, workdir: Path, device: str, repeats: int) -> list[dict]:
    """Per config, medians over repeats of total / scoring / metrics seconds of build_report + write_report(md),
    and its counts. The configs take turns in each repeat, so a noisy spell hits them all alike."""
    from pointad.eval.report import build_report, write_report

    runs = [[] for _ in configs]
    for _ in range(repeats):
        for i, config in enumerate(configs):
            with stage_clock() as spent:
                start = time.perf_counter()
                report = build_report(config, device)
                write_report(report, "md", workdir / f"report-{i}.md")
                spent["total"] = time.perf_counter() - start
            runs[i].append(spent | {"model": report.header["model"], "classes": report.classes})
    return [{key: statistics.median(run[key] for run in config_runs) for key in ("total", "scoring", "metrics")}
            | {key: config_runs[0][key] for key in ("samples", "metric_calls", "model", "classes")}
            for config_runs in runs]


def report_part(args) -> None:
    """Print part 2's setup line and table (module docstring)."""
    from pointad.eval.options import ReportConfig
    from pointad.eval.report import build_report

    with tempfile.TemporaryDirectory(prefix="eval-bench-") as tmp:
        workdir = Path(args.workdir) if args.workdir else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        store, run_dir, steps = synthetic_run(workdir, args)
        common = dict(store=str(store), dataset=DATASET, setting="one-vs-rest", batch_size=args.batch_size)
        cases = [("pointad, one-vs-rest, protocol `points`",
                  ReportConfig(**common, checkpoints=(str(run_dir),), protocol="points")),
                 ("pointad, one-vs-rest, protocol `both`",
                  ReportConfig(**common, checkpoints=(str(run_dir),), protocol="both")),
                 ("clip-rendering baseline, protocol `points`",
                  ReportConfig(**common, method="clip-rendering", model="tiny", protocol="points"))]
        build_report(cases[0][1], args.device)  # untimed: the first call pays torch's and open_clip's one-time setup
        timings = list(zip([name for name, _ in cases],
                           time_reports([config for _, config in cases], workdir, args.device, args.report_repeats)))

    print(f"## `eval report` on a synthetic store, model {timings[0][1]['model']}: a smoke-scale timing, "
          f"not the ViT-L/14@336 cost")
    print()
    print(f"Store: built-in synthetic generator, classes {', '.join(args.classes)}, test split only "
          f"({args.test_good} good + {args.per_defect} per defect each), {args.views} views of 336x336; pointad run "
          f"trained 1 epoch on {args.classes[0]}; device {args.device}, batch size {args.batch_size}; "
          f"median of {args.report_repeats} run(s) after one untimed warm-up report; "
          f"workdir {args.workdir or '(temporary)'}.")
    if steps:
        print("Setup (once, not the point): " + "; ".join(f"{name} {seconds:.1f} s" for name, seconds in steps))
    else:
        print("Setup: reused the store and run in the workdir.")
    print()
    print("| report | classes tested | samples | total s | vs `points` | scoring s | scored samples/s "
          "| metrics s | metrics ms / sample | other s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    base = timings[0][1]["total"]
    for name, t in timings:
        cells = [name, ", ".join(t["classes"]), str(t["samples"]), f"{t['total']:.2f}", f"{t['total'] / base:.2f}x",
                 f"{t['scoring']:.2f}", f"{t['samples'] / t['scoring']:.1f}", f"{t['metrics']:.3f}",
                 f"{1000 * t['metrics'] / t['samples']:.1f}",
                 f"{t['total'] - t['scoring'] - t['metrics']:.2f}"]
        print("| " + " | ".join(cells) + " |")
    print()
    print("scoring: inside `score_store_runs` (store read, model, back-projection, smoothing; `both` adds the compat "
          "grids); metrics: inside `class_metrics` (every block x protocol, "
          f"{timings[1][1]['metric_calls']} calls for `both`); other: build_report's model, checkpoint and prompt "
          "loading, plus write_report.")


def shared_pass_part(args) -> None:
    """Part 3: R runs of one frozen model scored with one vision pass per batch (`score_store_runs`, as
    `eval report` does) against one `score_store` per run (each run re-encoding the renderings)."""
    import dataclasses

    from pointad.eval.scoring import score_store, score_store_runs
    from pointad.shared.store import open_store
    from pointad.train.model.backbone import load_backbone
    from pointad.train.model.model_config import load_model_config

    config = load_model_config("tiny")
    if args.share_model == "vit-l-random":  # the real model's cost without its weights
        config = dataclasses.replace(load_model_config("vit-l-14-336"), pretrained=None, random_init=True,
                                     label="ViT-L-14-336 (random weights)")
    backbone = load_backbone(config, seed=0).to(args.device)
    texts = [backbone.encode_text([f"a normal object {k}.", f"a damaged object {k}."]) for k in range(args.share_runs)]
    with tempfile.TemporaryDirectory(prefix="eval-bench-") as tmp:
        workdir = Path(args.workdir) if args.workdir else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        store, _, _ = synthetic_run(workdir, args)
        rows = open_store(store).indices(dataset=DATASET, split="test")[:args.share_samples]
        autocast = args.device.startswith("cuda")
        start = time.perf_counter()
        separate = [list(score_store(store, rows, backbone, text, args.device, args.batch_size, autocast=autocast))
                    for text in texts]
        separate_s = time.perf_counter() - start
        start = time.perf_counter()
        shared = list(score_store_runs(store, rows, backbone, texts, args.device, args.batch_size, autocast=autocast))
        shared_s = time.perf_counter() - start
    difference = max(abs(alone[i].score - per_row[k].score) for k, alone in enumerate(separate)
                     for i, per_row in enumerate(shared))
    print(f"## {args.share_runs} runs of one model on {len(rows)} samples ({args.views} views + RGB), "
          f"model {backbone.label}, device {args.device}")
    print()
    print("| scoring | seconds | samples x runs / s | ratio |")
    print("|---|---:|---:|---:|")
    print(f"| one `score_store` per run (vision tower per run) | {separate_s:.2f} | "
          f"{len(rows) * len(texts) / separate_s:.2f} | 1.00x |")
    print(f"| `score_store_runs` (one vision pass per batch, as `eval report`) | {shared_s:.2f} | "
          f"{len(rows) * len(texts) / shared_s:.2f} | {separate_s / shared_s:.2f}x |")
    print()
    print(f"sample scores of every run: max |separate - shared| = {difference:.1e}")


def _peak_rss_during(fn):
    """(fn's result, peak resident memory above the starting level in bytes), sampled every 2 ms in a thread."""
    import threading

    def rss() -> int:
        return int(Path("/proc/self/statm").read_text().split()[1]) * 4096

    start, peak, done = rss(), [0], threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], rss())
            done.wait(0.002)
    thread = threading.Thread(target=watch)
    thread.start()
    try:
        result = fn()
    finally:
        done.set()
        thread.join()
    return result, max(0, max(peak[0], rss()) - start)


def mutual_part(args) -> None:
    """Part 4 (issue 13): seconds per sample and peak memory of `eval.mutual_math.mutual_scores` against class
    size, on synthetic features (random normal, L2-normalised; the time does not depend on the values)."""
    import torch

    from pointad.eval.mutual_math import block_sizes, mutual_scores
    from pointad.eval.options import BLOCK_BYTES
    device = torch.device(args.device)
    tokens, dim = args.mutual_tokens, args.mutual_dim
    rows = []
    for samples in args.mutual_sizes:
        features = torch.nn.functional.normalize(torch.randn(samples, tokens, dim, generator=torch.Generator()
                                                             .manual_seed(samples)), dim=-1).to(device)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        started = time.perf_counter()
        scores, rss = _peak_rss_during(lambda: mutual_scores(features, device=device).cpu())
        seconds = time.perf_counter() - started
        peak = torch.cuda.max_memory_allocated(device) - base if device.type == "cuda" else rss
        assert scores.shape == (samples, tokens) and torch.isfinite(scores).all()
        rows.append((samples, seconds, peak, block_sizes(tokens, samples, BLOCK_BYTES)))
    where = "GPU memory allocated by torch" if device.type == "cuda" else "process RSS above the start"
    print(f"## Mutual scoring (issue 13): one `mutual_scores` call, T = {tokens} patches, D = {dim}, on {device}")
    print()
    print("| class size N | seconds | seconds per sample | peak memory MiB | samples per block |")
    print("|---:|---:|---:|---:|---:|")
    for samples, seconds, peak, step in rows:
        print(f"| {samples} | {seconds:.2f} | {seconds / samples:.4f} | {peak / 2**20:.0f} | {step} |")
    print()
    print(f"Peak memory: {where}; one distance block is at most {BLOCK_BYTES // 2**20} MiB (measured peaks run about "
          "twice that: the block and the allocator's slack), plus (block, T, N) nearest distances, so it grows with "
          "N only through that last term. Cost grows as N^2 T^2 D (per sample "
          "as N). The method makes one such call per view, tapped layer and radius (9 x 4 x 3 = 108 with the "
          "defaults, `--mutual-views same`; `all` makes V^2 times the work per call in 1/V the calls).")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--maps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--loop-maps", type=int, default=2, help="maps with defects for the exact points loop")
    parser.add_argument("--compat-loop-maps", type=int, default=None,
                        help="maps pooled for the literal compat loop (default: all --maps)")
    parser.add_argument("--no-aupro", dest="aupro", action="store_false", help="skip part 1")
    parser.add_argument("--report", action=argparse.BooleanOptionalAction, default=True, help="part 2")
    parser.add_argument("--workdir", help="store and run folder, reused across runs (default: temporary)")
    parser.add_argument("--classes", nargs="+", default=["cookie", "dowel", "torus"],
                        help="synthetic classes; the first is the training class")
    parser.add_argument("--test-good", type=int, default=2, help="good test samples per class")
    parser.add_argument("--per-defect", type=int, default=1, help="test samples per defect type and class")
    parser.add_argument("--views", type=int, default=9)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--report-repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--share", action=argparse.BooleanOptionalAction, default=True, help="part 3")
    parser.add_argument("--share-model", default="tiny", choices=["tiny", "vit-l-random"])
    parser.add_argument("--share-runs", type=int, default=3)
    parser.add_argument("--share-samples", type=int, default=8)
    parser.add_argument("--mutual", action=argparse.BooleanOptionalAction, default=True, help="part 4")
    parser.add_argument("--mutual-sizes", type=int, nargs="+", default=[50, 100, 200], help="class sizes N")
    parser.add_argument("--mutual-tokens", type=int, default=576, help="patches per sample (24 x 24: ViT-L/14@336)")
    parser.add_argument("--mutual-dim", type=int, default=768, help="feature dimension (768: ViT-L's projection)")
    args = parser.parse_args()
    args.compat_loop_maps = args.compat_loop_maps or args.maps

    started = time.perf_counter()
    if args.aupro:
        aupro_part(args)
    if args.report:
        report_part(args)
    if args.share:
        print()
        shared_pass_part(args)
    if args.mutual:
        print()
        mutual_part(args)
    print()
    print(f"total runtime {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
