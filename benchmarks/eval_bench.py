"""Time AU-PRO on 100 organized 336 x 336 maps (SPEC 9): ours against the official MVTec method, same run.

Run: .venv/bin/python benchmarks/eval_bench.py [--maps 100] [--repeats 3] [--loop-maps 1] [--compat-loop-maps 10]

Maps: an elliptic object footprint per map (about 60 % of the grid) with 2 % sensor dropouts inside, the
rest missing; ~30 % normal maps, the others with 2-5 elliptic defects; scores = smooth noise plus a
blurred bump over each defect, float32. Rows:

- ``points`` (ours, `aupro_organized`): partition + sort of the top FPR part, PRO curve corners.
- official MVTec AD method (written here from its description: per-pixel FPR/PRO increments, one full
  descending argsort, cumulative sums, last point of each tie group, trapezoid cut at 0.3), fed the same
  valid-pixel definition (missing pixels weigh nothing), so both must agree to 1e-6.
- the exact per-threshold loop of the test suite (`_aupro_by_loop`), on --loop-maps maps only: its cost
  grows with (thresholds x pixels), so it is compared with ours on the same few maps, not extrapolated.
- ``pointad-compat`` (ours, `aupro_pointad_compat`) on the full grids (missing = score 0, label 0), and the
  suite's literal loop of the released definition on --compat-loop-maps maps, extrapolated linearly
  (200 thresholds x maps).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from bisect import bisect_right
from pathlib import Path

import numpy as np
from scipy import ndimage

from eval.metrics import aupro_organized, aupro_pointad_compat

ROOT = Path(__file__).resolve().parents[1]


def _test_twins():
    """The test suite's loop twins, loaded from their file so the benchmark times what the tests trust."""
    spec = importlib.util.spec_from_file_location("test_metrics", ROOT / "tests/eval/test_metrics.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module._aupro_by_loop, module._compat_by_loop


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--maps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--loop-maps", type=int, default=1, help="maps for the exact per-threshold loop")
    parser.add_argument("--compat-loop-maps", type=int, default=10, help="maps for the literal compat loop")
    args = parser.parse_args()

    masks, scores, valid = make_maps(args.maps)
    full_masks = np.where(valid, masks, 0)  # what the released evaluation sees: missing = label 0, score 0
    full_scores = np.where(valid, scores, 0).astype(np.float32)
    aupro_by_loop, compat_by_loop = _test_twins()

    ours_s, ours = timed(lambda: aupro_organized(masks, scores, valid), args.repeats)
    official_s, official = timed(lambda: aupro_mvtec_official(masks, scores, valid), args.repeats)
    few = slice(0, args.loop_maps)
    few_ours_s, few_ours = timed(lambda: aupro_organized(masks[few], scores[few], valid[few]), args.repeats)
    loop_s, loop = timed(lambda: aupro_by_loop(masks[few], scores[few], valid[few]), 1)
    compat_s, compat = timed(lambda: aupro_pointad_compat(full_masks, full_scores), args.repeats)
    some = slice(0, args.compat_loop_maps)
    some_compat = aupro_pointad_compat(full_masks[some], full_scores[some])
    compat_loop_s, compat_loop = timed(lambda: compat_by_loop(full_masks[some], full_scores[some]), 1)
    compat_loop_s *= args.maps / args.compat_loop_maps

    anomalous_maps = int((masks != 0).any(axis=(1, 2)).sum())
    print(f"{args.maps} maps of {masks.shape[1]}x{masks.shape[2]}: {anomalous_maps} with defects, "
          f"{valid.mean():.1%} of pixels valid, {(masks != 0)[valid].mean():.2%} of valid pixels anomalous; "
          f"median of {args.repeats} runs")
    print(f"points vs official: |diff| = {abs(ours - official):.2e} (agree to 1e-6: {abs(ours - official) <= 1e-6}); "
          f"vs exact loop on {args.loop_maps} map(s): |diff| = {abs(few_ours - loop):.2e}; "
          f"compat vs literal loop on {args.compat_loop_maps} maps: |diff| = {abs(some_compat - compat_loop):.2e}")
    print()
    print("| AU-PRO computation | maps | seconds | ours faster by | value |")
    print("|---|---:|---:|---:|---:|")
    print(f"| `points` (ours) | {args.maps} | {ours_s:.3f} | | {ours:.6f} |")
    print(f"| official MVTec AD method (full argsort) | {args.maps} | {official_s:.3f} | "
          f"{official_s / ours_s:.1f}x | {official:.6f} |")
    print(f"| `points` (ours) | {args.loop_maps} | {few_ours_s:.4f} | | {few_ours:.6f} |")
    print(f"| exact per-threshold loop (test twin) | {args.loop_maps} | {loop_s:.2f} | "
          f"{loop_s / few_ours_s:.0f}x | {loop:.6f} |")
    print(f"| `pointad-compat` (ours, full grid) | {args.maps} | {compat_s:.3f} | | {compat:.6f} |")
    print(f"| `pointad-compat` literal loop (test twin), {args.compat_loop_maps} maps x "
          f"{args.maps // args.compat_loop_maps} | {args.maps} | {compat_loop_s:.1f} | "
          f"{compat_loop_s / compat_s:.0f}x | |")


if __name__ == "__main__":
    main()
