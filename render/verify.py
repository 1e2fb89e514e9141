"""`render verify` and `render info`: consistency checks and a summary of a render store.

Every chunk of every complete row must exist and decode (a deleted chunk would read back as zeros);
then every check recomputes something from the stored points, so a store that passes is one whose
projections and visibility follow from `points/xyz` and the stored cameras (`cameras/*`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..shared.location import is_remote
from ..shared.names import printable
from ..shared.sample import Sample
from ..shared.store import RenderStore, StoredSample
from ..shared.store_check import chunk_problems
from .options import RenderOptions
from .sample_render import render_sample


def check_sample(sample: StoredSample, store: RenderStore) -> list[str]:
    """Problems of one complete row (empty if none), each prefixed with its sample id."""
    n = int(sample.n_points)
    problems = []

    def problem(text):
        problems.append(f"{sample.dataset}:{sample.sample_id}: {text}")

    if not sample.valid[:n].all() or sample.valid[n:].any():
        problem(f"valid is not the first n_points={n} slots")
        return problems
    labels = sample.label[:n]
    if not np.isin(labels, (0, 1)).all():
        problem("point labels outside {0, 1}")
    if sample.sample_label == 0 and labels.any():
        problem(f"good sample has {int(labels.sum())} anomalous points")
    if sample.sample_label == 1 and not labels.any():
        problem("anomalous sample (label 1) but every point label is 0")
    masks_hit = sample.mask.reshape(len(sample.mask), -1).any(axis=1)
    if labels.any() and not masks_hit.any():
        problem("anomalous points but every rendered mask is empty")
    if not labels.any() and masks_hit.any():
        problem("no anomalous point but a rendered mask is not empty")
    if sample.visible[:, n:].any():
        problem("padding marked visible")
    seen = sample.visible[:, :n].any(axis=0)
    proxy = sample.proxy[:n]
    if (proxy < 0).any() or (proxy >= n).any() or not seen[proxy].all() or (sample.proxy[n:] != -1).any():
        problem("proxy points outside the cloud, at unseen points, or set on padding")
    if (sample.knn[:n, 0] != np.arange(n)).any() or (sample.knn[n:] != -1).any():
        problem("k-NN graph rows do not start with the point itself, or padding rows are set")
    if np.abs(sample.knn_weight[:n].astype(np.float32).sum(axis=1) - 1).max(initial=0) > 1e-2:
        problem("k-NN weights do not sum to 1")
    grid = sample.grid_index[:n]
    organized = tuple(sample.grid_hw) != (0, 0)
    if organized and ((grid < 0).any() or len(np.unique(grid)) != n or grid.max() >= np.prod(sample.grid_hw)):
        problem("grid_index not unique cells of the organized grid")
    if not organized and (grid != -1).any():
        problem("grid_index set on an unorganized cloud")
    problems += [f"{sample.dataset}:{sample.sample_id}: {p}" for p in _reproduce(sample, store)]
    return problems


def _reproduce(sample: StoredSample, store: RenderStore) -> list[str]:
    """Check the stored pixels and visibility against the stored cameras (`cameras/intrinsic`, `extrinsic`);
    report any difference. A v1 store has no cameras: they are derived from xyz and the attributes as
    `render migrate` computes them.

    The stored pixels were computed in float32 (render/camera.py); here the projection is float64 through
    the matrices, so a pixel may differ only by rounding (within PIXEL_SLACK of half a pixel), a point's
    depth only relatively by DEPTH_SLACK, and points within PIXEL_SLACK of the image border are not judged.
    """
    attrs, n = store.attrs, int(sample.n_points)
    options = RenderOptions.from_store(attrs.render, sample.dataset, sample.class_name, str(store.path))
    points = sample.xyz[:n]
    if sample.intrinsic is None:
        from .migrate import store_cameras  # v1: the cameras v1's verify derived
        intrinsic, extrinsic = (c[0] for c in store_cameras(store, [sample.index]))
    else:
        intrinsic, extrinsic = sample.intrinsic, sample.extrinsic
    if not (np.isfinite(intrinsic).all() and np.isfinite(extrinsic).all()):
        return ["cameras not recorded (NaN): 'render build --repair' renders the row again"]
    camera_xyz = np.einsum("vij,pj->vpi", extrinsic[:, :3, :3], points.astype(np.float64)) + extrinsic[:, None, :3, 3]
    depth = camera_xyz[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = np.einsum("ij,vpj->vpi", intrinsic[:2], camera_xyz) / depth[..., None]  # (V, P, 2) unrounded
    last = attrs.image_size - 1
    near_border = ((np.abs(uv + 0.5) < PIXEL_SLACK) | (np.abs(uv - last - 0.5) < PIXEL_SLACK)).any(-1)
    inside = (depth > 0) & (np.rint(uv) >= 0).all(-1) & (np.rint(uv) <= last).all(-1)
    out = []
    off = (np.abs(np.clip(uv, 0, last) - sample.pixel[:, :n]) > 0.5 + PIXEL_SLACK).any(-1) & ~near_border
    if off.any():
        out.append(f"stored pixels differ from the projection through the stored cameras at {int(off.sum())} "
                   "point-views")
    stored = sample.visible[:, :n]
    judged = ~near_border
    pid = sample.pixel[:, :n, 1].astype(np.int64) * attrs.image_size + sample.pixel[:, :n, 0]
    nearest = np.full((len(depth), attrs.image_size ** 2), np.inf)
    for view in range(len(depth)):
        np.minimum.at(nearest[view], pid[view][inside[view]], depth[view][inside[view]])
    front = np.take_along_axis(nearest, pid, axis=1)  # (V, n): nearest depth in each point's pixel
    if options.visibility == "nearest":
        wrong = stored & (~inside | (depth > front * (1 + DEPTH_SLACK)))
        counts = np.zeros_like(nearest, dtype=np.int64)
        for view in range(len(depth)):
            np.add.at(counts[view], pid[view][stored[view]], 1)
        hit = np.isfinite(nearest)
        wrong_pixels = int(((counts != 1) & hit).sum() + (counts[~hit] > 0).sum())
        if wrong_pixels:
            out.append(f"{wrong_pixels} pixel-view(s) with other than one visible point (nearest visibility)")
    else:
        centre = (points.min(axis=0) + points.max(axis=0)) / 2  # the bounding radius, as render_sample uses
        radius = float(np.linalg.norm(points - centre, axis=1).max(initial=0))
        limit = front + options.surface_tolerance * radius
        wrong = (stored & (~inside | (depth > limit * (1 + DEPTH_SLACK)))) | \
            (~stored & inside & (depth < limit * (1 - DEPTH_SLACK)))
    wrong &= judged
    if wrong.any():
        out.append(f"stored visibility differs from the recomputed one at {int(wrong.sum())} point-views")
    return out


# float64 through the stored matrices against the stored float32 results: rounding slack
PIXEL_SLACK, DEPTH_SLACK = 1e-3, 1e-5


# A fresh Open3D render of a row differs from the stored one by Mesa's rounding alone; the splat renderer
# is deterministic (tests/render/test_splat.py measures both against each other with these numbers).
CLOSE_FRACTION, CLOSE_LEVELS, CLOSE_MEAN = 0.995, 2, 0.5


def rerender_problems(sample: StoredSample, store: RenderStore, device="cpu") -> list[str]:
    """Differences between a row's views and masks and a fresh render of its stored points with the
    recorded options and renderer: splat must give the same bytes; legacy at least CLOSE_FRACTION of
    the pixels within CLOSE_LEVELS and a mean difference under CLOSE_MEAN levels (rendered masks alike,
    splatted masks equal). Filament stores are not re-rendered (no reference tolerance measured)."""
    drawn = RenderOptions.from_store(store.attrs.render, sample.dataset, sample.class_name, str(store.path))
    renderer = drawn.renderer
    if renderer == "filament":
        return []
    options = replace(drawn, downsample=1.0)  # the stored points are the drawn ones
    n = int(sample.n_points)
    organized = tuple(sample.grid_hw) != (0, 0)
    cloud = Sample(dataset=sample.dataset, class_name=sample.class_name, split=sample.split,
                   defect_type=sample.defect_type, sample_id=sample.sample_id, label=sample.sample_label,
                   points=sample.xyz[:n], point_labels=sample.label[:n], grid_hw=tuple(int(x) for x in sample.grid_hw),
                   grid_index=sample.grid_index[:n] if organized else None)
    rasterizer = None
    if renderer != "splat":
        from .rasterize import worker_rasterizer  # opens an Open3D window: only when needed
        rasterizer = worker_rasterizer(options.image_size * options.supersample, renderer)
    fresh = render_sample(cloud, options, rasterizer, device)
    out = []
    for name, exact in (("image", renderer == "splat"), ("mask", renderer == "splat" or options.masks == "splat")):
        stored, again = getattr(sample, name).astype(np.int16), getattr(fresh, name).astype(np.int16)
        diff = np.abs(stored - again).reshape(*stored.shape[:3], -1).max(axis=-1)  # (V, S, S): per pixel
        if exact and diff.any():
            out.append(f"stored {name}s differ from a fresh {renderer} render at {int((diff > 0).sum())} pixel(s) "
                       f"(largest difference {int(diff.max())})")
        elif not exact and ((diff <= CLOSE_LEVELS).mean() < CLOSE_FRACTION or diff.mean() >= CLOSE_MEAN):
            out.append(f"stored {name}s differ from a fresh {renderer} render: {(diff <= CLOSE_LEVELS).mean():.2%} of "
                       f"pixels within {CLOSE_LEVELS} levels (need {CLOSE_FRACTION:.1%}), mean {diff.mean():.2f} "
                       f"(need < {CLOSE_MEAN})")
    return out


def rerender_rows(indices, count: int) -> list[int]:
    """Up to `count` rows spread evenly over the given complete rows (first and last included)."""
    indices = np.asarray(indices)
    if count <= 0 or len(indices) == 0:
        return []
    return sorted({int(indices[i]) for i in np.linspace(0, len(indices) - 1, min(count, len(indices))).round().astype(int)})


def verify_store(store: RenderStore, progress=None, rerender: int = 3, device="cpu") -> list[str]:
    """All problems of the store: incomplete rows, chunks of complete rows that are missing or do not
    decode ('render build --repair' renders those rows again), per-row inconsistencies, and for
    `rerender` rows spread over the store, differences from a fresh render (`rerender_problems`)."""
    def name(i):
        return f"{store.identity(i)['dataset']}:{store.identity(i)['sample_id']}"
    table = store.table()
    for dataset, class_name in sorted(set(zip(table["dataset"].tolist(), table["class_name"].tolist()))):
        RenderOptions.from_store(store.attrs.render, dataset, class_name, str(store.path))  # tampered: one line first

    problems = [f"{name(i)}: row {i} is incomplete" for i in np.flatnonzero(~store.complete)]
    damaged = set()
    for index in store.indices():
        damage = chunk_problems(store, [index], decode=True)
        problems += [f"{name(row)}: row {row}: array {array}: {reason}" for row, array, reason in damage]
        if damage:
            damaged.add(int(index))
        else:
            problems += check_sample(store.sample(int(index)), store)
        if progress is not None:
            progress.update(1)
    for index in rerender_rows([i for i in store.indices() if int(i) not in damaged], rerender):
        problems += [f"{name(index)}: {p}" for p in rerender_problems(store.sample(index), store, device)]
    if damaged:
        problems.append(f"{len(damaged)} damaged row(s): 'render build --repair' with the same dataset and "
                        "options renders them again")
    return problems


def _stored_bytes(location) -> int:
    """Bytes the store holds: its files on disk, or its objects on object storage (one listing)."""
    if is_remote(location):
        return int(location.fs.du(location.path))
    return sum(p.stat().st_size for p in Path(location).rglob("*") if p.is_file())


def store_summary(store: RenderStore) -> str:
    """Human-readable summary: attributes, counts per dataset/class/split, failures, size on disk."""
    attrs = store.attrs
    counts, complete, anomalous = Counter(), Counter(), Counter()
    for i in range(len(store)):
        identity = store.identity(i)
        key = (identity["dataset"], identity["class_name"], identity["split"])
        counts[key] += 1
        complete[key] += bool(store.complete[i])
        anomalous[key] += identity["label"]
    size = _stored_bytes(store.path)
    render = attrs.render
    lines = [f"{store.path}: pointad render store, schema v{store.schema_version}, {len(store)} samples, "
             f"{size / 2**20:.1f} MiB ({size / max(len(store), 1) / 2**20:.2f} MiB per sample)",
             f"views {attrs.views} ({attrs.view_plan.get('name', '?')}), image {attrs.image_size}px, max_points "
             f"{attrs.max_points}, knn {attrs.knn}, visibility {render.visibility}, light {render.light}, "
             f"supersample {render.supersample}",
             f"drawn by renderer {render.renderer or 'legacy'}, masks {render.masks}",
             f"{'dataset':<20} {'class':<18} {'split':<11} {'samples':>7} {'complete':>8} {'anomalous':>9}"]
    for (dataset, class_name, split), total in sorted(counts.items()):
        key = (dataset, class_name, split)
        dataset, class_name, split = map(printable, key)  # names from data: one printable line each
        lines.append(f"{dataset:<20} {class_name:<18} {split:<11} {total:>7} {complete[key]:>8} {anomalous[key]:>9}")
    lines.append(f"failures: {len(attrs.failures)}")
    lines += [f"  {printable(f['dataset'])}:{printable(f['sample_id'])}: {printable(f['reason'])}"
              for f in attrs.failures]
    return "\n".join(lines)
