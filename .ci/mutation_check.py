"""Mutation check: apply one-line bugs on the numbers path, run the matching tests, print caught / survived.

The list holds the numbers path's bugs (issue 15 on) and, since issue 25, one bug of each kind an audit
planted in newly landed code (store checks, mutual scoring, schema names, HDF5 export, import-released,
view plans, figures, strict parsing, the feature cache).

A check of the test suite, so it lives beside CI's script (.ci/), but CI does not run it (each mutation
rebuilds the synthetic test store, about a minute on 2 cores). Each mutation is applied to a fresh copy
of the repository (without .venv, .git and caches) in a temporary folder, never to the checkout; its
tests run there with this checkout's virtual environment, and the copy's packages are the ones imported
(checked before the first run). A mutation whose original line is not found exactly once is reported as
such, not applied.

    .venv/bin/python .ci/mutation_check.py [--only NAME ...] [--list] [--check] [--baseline]

`--check` runs nothing: it says, for each mutation, whether its original line is found exactly once in the
checkout (after a line moves, the entry naming it must follow).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTHON = REPO / ".venv" / "bin" / "python"
IGNORED = shutil.ignore_patterns(".venv", ".git", "__pycache__", ".pytest_cache", "*.egg-info", ".*.pointad-lock")

REPORT = "tests/eval/test_report_numbers.py"
SCORES = "tests/eval/test_score_numbers.py"
DETECT = "tests/eval/test_detect_numbers.py"
STORE = "tests/render/test_store_numbers.py"
SCORING, METRICS = "tests/eval/test_score_maps.py", "tests/eval/test_metrics.py"
GRAPH, MAPS = "tests/render/test_graph.py", "tests/train/test_maps.py"
# issue 25's tests, one per class of one-line bug an audit planted in code landed since the previous audit
STORE_CHECK, STORE_FAULTS = "tests/shared/test_store_check.py", "tests/faults/test_store_faults.py"
MUTUAL, DETECT_MUTUAL = "tests/eval/test_mutual_scoring.py", "tests/eval/test_detect_mutual.py"
SCHEMA, H5 = "tests/shared/test_store_v2.py", "tests/shared/test_h5store.py"
RELEASED, HOSTILE = "tests/train/test_released.py", "tests/faults/test_hostile_files.py"
PLANS, FIGURES = "tests/render/test_view_plan_variants.py", "tests/eval/test_figures.py"
STRICT = "tests/shared/test_strict.py"
CACHE, TRAIN_FAULTS = "tests/train/test_feature_cache_identity.py", "tests/faults/test_train_faults.py"


@dataclass(frozen=True)
class Mutation:
    """name; path relative to the repository; original: one whole line (without its newline), which must
    occur exactly once; mutated: its replacement; tests: test files run against the mutant."""

    name: str
    path: str
    original: str
    mutated: str
    tests: tuple[str, ...]


MUTATIONS = [
    # the five of issue 15, each of which passed the whole suite before its tests were written
    Mutation("detect: preprocessing flip not undone", "eval/detect.py",
             "    return input_points, sample, flip_x180(rendered) if prep.flip else rendered, arrays",
             "    return input_points, sample, rendered, arrays", (DETECT,)),
    Mutation("scoring: unorganized clouds skip k-NN smoothing", "eval/score_maps.py",
             '        point_map = smooth_graph(raw_points, row["knn"], row["knn_weight"])[valid]',
             "        point_map = raw_points[valid]", (SCORES, SCORING)),
    Mutation("report: graph AU-PRO counts padding points", "eval/class_metrics.py",
             '            out["aupro"] = aupro_graph(labels, scores, knn, valid)',
             '            out["aupro"] = aupro_graph(labels, scores, knn)', (REPORT,)),
    Mutation("render: proxy from view 0's visibility only", "render/sample_render.py",
             "    proxy = proxy_indices(points, valid, visible.any(axis=0), knn, workers=budget)",
             "    proxy = proxy_indices(points, valid, visible[0], knn, workers=budget)", (STORE, GRAPH)),
    Mutation("report: mean row is the maximum over classes", "eval/report.py",
             "                        float(np.mean(finite)) if finite else math.nan)",
             "                        float(np.max(finite)) if finite else math.nan)", (REPORT,)),
    # more one-line bugs on the way from renderings to printed numbers
    Mutation("report: compat sample metrics from the points' sample scores", "eval/class_metrics.py",
             "        out = image_metrics(sample_labels, np.array(compat_scores))",
             "        out = image_metrics(sample_labels, np.array(sample_scores))", (REPORT,)),
    Mutation("report: organized AU-PRO merges regions of different samples", "eval/class_metrics.py",
             "            region[region >= 0] += offset",
             "            region[region >= 0] += 0", (REPORT,)),
    Mutation("report: NaN classes enter the mean row", "eval/report.py",
             "                    finite = [v for v in column if math.isfinite(v)]",
             "                    finite = column", (REPORT, "tests/eval/test_class_metrics.py")),
    Mutation("metrics: compat AU-PRO keeps FPR == max_fpr", "eval/metrics.py",
             "    kept = fpr < max_fpr",
             "    kept = fpr <= max_fpr", (METRICS, REPORT)),
    Mutation("scoring: sample score takes the max view probability", "eval/score_maps.py",
             "    return 0.5 * (float(np.mean(view_anomaly_probs)) + float(np.max(point_map)))",
             "    return 0.5 * (float(np.max(view_anomaly_probs)) + float(np.max(point_map)))", (SCORING, SCORES)),
    Mutation("scoring: RGB point map not smoothed", "eval/score_maps.py",
             "    smoothed = smooth_grid(rgb_map, np.ones_like(rgb_map), sigma, weight).ravel()",
             "    smoothed = rgb_map.ravel()", (SCORING, SCORES)),
    Mutation("scoring: multimodal map fuses the point map with itself", "eval/score_maps.py",
             "        fused = fused_point_map(point_map, rgb_points, grid_index, grid_hw, sigma, weight)",
             "        fused = fused_point_map(point_map, point_map, grid_index, grid_hw, sigma, weight)",
             (SCORING, SCORES)),
    Mutation("scoring: fused sample score with the mean of the fused map", "eval/score_maps.py",
             "    return 0.5 * (0.5 * (rgb_sample_score + point_sample_score) + float(np.max(fused_map)))",
             "    return 0.5 * (0.5 * (rgb_sample_score + point_sample_score) + float(np.mean(fused_map)))",
             (SCORING, SCORES)),
    Mutation("maps: back-projection divides by all views (paper's 1/K)", "train/model/maps.py",
             "    out = total / count",
             "    out = total / views", (MAPS, SCORES)),
    Mutation("camera: principal point shifted by 0.17 px", "render/camera.py",
             "    focal, principal = np.float32(camera.focal), np.float32(camera.image_size / 2 - 0.5)",
             "    focal, principal = np.float32(camera.focal), np.float32(camera.image_size / 2 - 0.33)", (STORE,)),
    Mutation("graph: k-NN weights not normalised", "render/graph.py",
             "    gauss /= gauss.sum(axis=1, keepdims=True)  # >= 1 before dividing: the self column weighs exp(0)",
             "    pass", (GRAPH, SCORES)),
    Mutation("store: sample labels read inverted", "shared/store.py",
             '        return {**{name: str(self._identity[name][i]) for name in IDENTITY}, "label": int(self._label[i])}',
             '        return {**{name: str(self._identity[name][i]) for name in IDENTITY}, '
             '"label": 1 - int(self._label[i])}',
             (REPORT,)),
    # issue 25: the kinds of one-line bug an audit planted in code landed since the last audit and the suite
    # let through; each list starts with the test written for its kind (pytest -x stops at the first failure)
    Mutation("store check: chunk existence skips the first required row", "shared/store_check.py",
             "    required = rows[rows >= store.chunks_checked_from]",
             "    required = rows[rows > store.chunks_checked_from]", (STORE_CHECK, STORE_FAULTS)),
    Mutation("store check: decoding skips the first row", "shared/store_check.py",
             "        for row in map(int, rows):",
             "        for row in map(int, rows[1:]):", (STORE_CHECK, STORE_FAULTS)),
    Mutation("verify: complete rows checked from the second on", "render/verify.py",
             "    for index in store.indices():",
             "    for index in store.indices()[1:]:", (STORE_CHECK, STORE_FAULTS)),
    Mutation("mutual scoring: negative similarities kept as re-scoring weights", "eval/mutual_math.py",
             "    similarity = (unit @ unit.T).clamp(min=0)",
             "    similarity = unit @ unit.T", (MUTUAL, DETECT_MUTUAL)),
    Mutation("mutual scoring: patch scores summed over the radii", "eval/mutual.py",
             "    return (total / (layers * len(options.radii))).cpu()",
             "    return (total / layers).cpu()", (MUTUAL, DETECT_MUTUAL)),
    # issue 23: PointAD and mutual scoring share one scoring tail (eval/score_maps.py `score_row`)
    Mutation("scoring tail: mutual scoring's sample score is the map's mean", "eval/score_maps.py",
             "    return float(np.max(point_map)) if probs is None else sample_score(probs, point_map)",
             "    return float(np.mean(point_map)) if probs is None else sample_score(probs, point_map)",
             (SCORING, MUTUAL)),
    Mutation("scoring tail: compat grids without the RGB block", "eval/score_maps.py",
             "                                        rgb_map if use_rgb else None, rgb_probs, sigma)",
             "                                        None, rgb_probs, sigma)", (SCORING, REPORT)),
    Mutation("schema: views/mask names its row and col axes swapped", "shared/store_schema.py",
             '    ArraySpec("views/mask", ("V", "S", "S"), "uint8", 0, "mask", dims=("view", "row", "col"),',
             '    ArraySpec("views/mask", ("V", "S", "S"), "uint8", 0, "mask", dims=("view", "col", "row"),',
             (SCHEMA,)),
    Mutation("schema: cameras/intrinsic names its row3 and col3 axes swapped", "shared/store_schema.py",
             '    ArraySpec("cameras/intrinsic", (3, 3), "float64", float("nan"), "intrinsic", '
             'dims=("row3", "col3"),',
             '    ArraySpec("cameras/intrinsic", (3, 3), "float64", float("nan"), "intrinsic", '
             'dims=("col3", "row3"),',
             (SCHEMA,)),
    Mutation("HDF5 export: replaces any file with a format attribute", "shared/h5store.py",
             '            ours = json.loads(file.attrs.get("format", "null")) == FORMAT',
             '            ours = "format" in file.attrs', (H5, HOSTILE)),
    Mutation("import-released: the folder's tapped layers ignored", "train/released.py",
             "    layers = tuple(layers) if layers else hints.layers",
             "    layers = tuple(layers) if layers else None", (RELEASED, HOSTILE)),
    Mutation("view plan: pre-rotations composed in the wrong order", "render/view_plan.py",
             "            out = rotation(axis, angle) @ out",
             "            out = out @ rotation(axis, angle)", (PLANS,)),
    Mutation("figures: the multimodal PLY carries the point scores", "eval/report_figures.py",
             "                                            result.multimodal_point_scores,",
             "                                            result.point_scores,",
             (FIGURES, "tests/eval/test_report.py")),
    Mutation("strict: a too-long list accepted for a fixed-length tuple", "shared/strict.py",
             "        if len(value) != len(args):",
             "        if len(value) < len(args):", (STRICT,)),
    Mutation("features: the cache ignores the rows' stored content", "train/features.py",
             '    identity.setdefault("row_content", row_content(store_path, rows))',
             "    pass", (CACHE, TRAIN_FAULTS)),
]


def copy_repo(target: Path) -> Path:
    copy = target / "repo"
    shutil.copytree(REPO, copy, ignore=IGNORED, symlinks=True)
    return copy


def apply(copy: Path, mutation: Mutation, dry_run: bool = False) -> str | None:
    """Mutate the copy (with dry_run: only look); return None, or why the mutation could not be applied."""
    path = copy / mutation.path
    if not path.is_file():
        return "file not found"
    lines = path.read_text().splitlines(keepends=True)
    where = [i for i, line in enumerate(lines) if line.rstrip("\r\n") == mutation.original]
    if len(where) != 1:
        return "original line not found" if not where else f"original line found {len(where)} times"
    if dry_run:
        return None
    ending = lines[where[0]][len(mutation.original):]
    lines[where[0]] = mutation.mutated + ending
    path.write_text("".join(lines))
    return None


def check_imports(copy: Path) -> None:
    """The copy's packages, not the checkout's (the venv holds an editable install of it), must be imported."""
    code = ("import pointad.render as r, pointad.train as t, pointad.eval as e, pointad.shared as s; "
            "print('\\n'.join(m.__file__ for m in (r, t, e, s)))")
    files = subprocess.run([str(PYTHON), "-c", code], cwd=copy, env=_env(copy), capture_output=True, text=True,
                           check=True).stdout
    outside = [f for f in files.split() if not Path(f).resolve().is_relative_to(copy.resolve())]
    if outside:
        raise SystemExit(f"the copy imports packages from elsewhere: {outside}")


def _env(copy: Path) -> dict:
    """The copy importable as `pointad` ahead of the venv's editable install: a `pointad` link beside it."""
    link = copy.parent / f"{copy.name}-import" / "pointad"
    link.parent.mkdir(exist_ok=True)
    if not link.exists():
        link.symlink_to(copy.resolve(), target_is_directory=True)
    return {**os.environ, "PYTHONPATH": str(link.parent)}


def run_tests(copy: Path, tests, timeout: float) -> tuple[str, float, str]:
    """(caught | survived | timeout | error rc, seconds, last output line)."""
    start = time.monotonic()
    try:
        done = subprocess.run([str(PYTHON), "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests], cwd=copy,
                              env=_env(copy),
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", time.monotonic() - start, ""
    lines = (done.stdout + done.stderr).strip().splitlines()
    last = lines[-1] if lines else ""
    status = {0: "survived", 1: "caught"}.get(done.returncode, f"error rc {done.returncode}")
    return status, time.monotonic() - start, last


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="run the mutations whose name contains one of these words")
    parser.add_argument("--list", action="store_true", help="list the mutations and stop")
    parser.add_argument("--check", action="store_true",
                        help="say whether each mutation's original line is in the checkout exactly once, run nothing")
    parser.add_argument("--baseline", action="store_true",
                        help="first run every listed test file on the unmutated copy")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per mutation")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.only or any(word in m.name for word in args.only)]
    if args.list:
        for m in chosen:
            print(f"{m.name}: {m.path}: {' '.join(m.tests)}")
        return 0
    if args.check:
        problems = [(m, apply(REPO, m, dry_run=True)) for m in chosen]
        for m, problem in problems:
            print(f"{'applies' if problem is None else 'NOT APPLIED: ' + problem:<12}  {m.path}  {m.name}")
        return 1 if any(problem is not None for _, problem in problems) else 0
    rows = []
    with tempfile.TemporaryDirectory(prefix="mutation-check-") as tmp:
        pristine = copy_repo(Path(tmp) / "pristine")
        check_imports(pristine)
        if args.baseline:
            tests = sorted({t for m in chosen for t in m.tests})
            status, seconds, last = run_tests(pristine, tests, args.timeout)
            outcome = "passed" if status == "survived" else status
            print(f"baseline ({len(tests)} files): {outcome} in {seconds:.0f} s: {last}", flush=True)
            if status != "survived":
                return 1
        for number, mutation in enumerate(chosen):
            copy = Path(tmp) / f"m{number}"
            shutil.copytree(pristine, copy, symlinks=True)
            problem = apply(copy, mutation)
            if problem is not None:
                rows.append((mutation, f"not applied: {problem}", 0.0, ""))
            else:
                rows.append((mutation, *run_tests(copy, mutation.tests, args.timeout)))
            shutil.rmtree(copy, ignore_errors=True)
            print(f"{rows[-1][1]:<10} {rows[-1][2]:5.0f} s  {mutation.name}  ({rows[-1][3]})", flush=True)
    width = max(len(m.name) for m in chosen)
    print(f"\n{'mutation':<{width}}  {'file':<24} {'result':<10} tests")
    for mutation, status, _, _ in rows:
        tests = ", ".join(Path(t).name for t in mutation.tests)
        print(f"{mutation.name:<{width}}  {mutation.path:<24} {status:<10} {tests}")
    caught = sum(status == "caught" for _, status, _, _ in rows)
    survived = sum(status == "survived" for _, status, _, _ in rows)
    print(f"\ncaught {caught} / survived {survived} / other {len(rows) - caught - survived} of {len(rows)} mutations")
    return 0


if __name__ == "__main__":
    sys.exit(main())
