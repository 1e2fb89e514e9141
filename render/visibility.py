"""Per-view visibility, design §3.6: the nearest point per pixel wins (or every point near the nearest one).

Both rules work on the output of `render.camera.project`: every considered point (valid, and inside
the image when `inside` is given) falls into one pixel of one view; a pixel's points compete only
with each other. One depth buffer of V * S * S cells, filled with one `np.minimum.at`, no loops.
Each rule has a `_naive` twin beside it: the textbook per-point loop, slow and plainly correct, which the
tests compare with the fast version and `benchmarks/bench_visibility.py` times against it.
"""

from __future__ import annotations

import numpy as np

_NO_POINT = np.iinfo(np.uint64).max


def nearest_per_pixel(pixel, depth, valid, image_size, inside=None) -> np.ndarray:
    """Return visible (V, P) bool: True where the point is the nearest to the camera in its pixel.

    pixel: (V, P, 2) int, (u = column, v = row) in [0, S); depth: (V, P) float camera z (smaller is
    nearer); valid: (P,) bool, False for padding; image_size: S; inside: optional (V, P) bool, False
    where the point fell outside the image (`project`'s third output). Only valid (and inside) points
    compete and can be visible. Exactly one point per hit pixel is visible: the smallest depth, ties
    (bit-identical depths) broken by the lower point index. This is the paper's rule (design §3.6).
    """
    cell, considered = _pixel_cells(pixel, depth, valid, image_size, inside)
    count = depth.shape[1]
    # one uint64 per point: depth in the high 32 bits (order-preserving), point index in the low bits,
    # so the per-pixel minimum picks the nearest point and, among equal depths, the lowest index
    rank = (_sortable_bits(depth).astype(np.uint64) << np.uint64(32)) | np.arange(count, dtype=np.uint64)
    best = np.full(_cells(depth, image_size) + 1, _NO_POINT, dtype=np.uint64)
    np.minimum.at(best, cell.ravel(), rank.ravel())
    return considered & (rank == best[cell])


def surface_visible(pixel, depth, valid, image_size, tolerance, inside=None) -> np.ndarray:
    """Return visible (V, P) bool: True where depth <= nearest depth in the point's pixel + tolerance.

    Same inputs as `nearest_per_pixel`; tolerance: absolute depth tolerance in the cloud's units
    (design §3.6 `--visibility surface`, e.g. 1% of the bounding radius; the caller converts). A superset
    of `nearest_per_pixel`; with tolerance 0 it differs only where several points tie for the nearest
    depth (all of them are visible here). Invalid and outside points are never visible.
    """
    if not tolerance >= 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    cell, considered = _pixel_cells(pixel, depth, valid, image_size, inside)
    depth = np.asarray(depth, dtype=np.float32)
    nearest = np.full(_cells(depth, image_size) + 1, np.inf, dtype=np.float32)
    np.minimum.at(nearest, cell.ravel(), depth.ravel())
    return considered & (depth <= nearest[cell] + np.float32(tolerance))


def nearest_per_pixel_naive(pixel, depth, valid, image_size, inside=None) -> np.ndarray:
    """`nearest_per_pixel` as the textbook z-buffer loop: slow (a Python loop over every point), plainly correct.

    Per view, visit the considered points in index order and keep, per (u, v), the first point of strictly
    smallest depth. Same inputs and result; no checks of shapes or pixels (the fast version makes them).
    """
    views, count = np.shape(depth)
    visible = np.zeros((views, count), dtype=bool)
    for view in range(views):
        best = {}  # (u, v) -> (depth, point)
        for point in range(count):
            if not valid[point] or (inside is not None and not inside[view, point]):
                continue
            key = (int(pixel[view, point, 0]), int(pixel[view, point, 1]))
            if key not in best or depth[view, point] < best[key][0]:
                best[key] = (depth[view, point], point)
        for _, point in best.values():
            visible[view, point] = True
    return visible


def surface_visible_naive(pixel, depth, valid, image_size, tolerance, inside=None) -> np.ndarray:
    """`surface_visible` as two loops per view: slow, plainly correct.

    First the nearest depth of each (u, v) in a dict, then every considered point within tolerance of its
    pixel's nearest depth (the sum rounded to float32, as there). Same inputs and result, no checks.
    """
    views, count = np.shape(depth)
    visible = np.zeros((views, count), dtype=bool)
    for view in range(views):
        considered = [p for p in range(count) if valid[p] and (inside is None or inside[view, p])]
        nearest = {}
        for point in considered:
            key = (int(pixel[view, point, 0]), int(pixel[view, point, 1]))
            nearest[key] = min(nearest.get(key, np.inf), float(depth[view, point]))
        for point in considered:
            key = (int(pixel[view, point, 0]), int(pixel[view, point, 1]))
            visible[view, point] = float(depth[view, point]) <= nearest[key] + np.float32(tolerance)
    return visible


def _cells(depth, image_size) -> int:
    return depth.shape[0] * image_size * image_size


def _pixel_cells(pixel, depth, valid, image_size, inside):
    """(V, P) int64 buffer cell view * S * S + v * S + u of each considered point, and the (V, P) mask
    of considered points; the others point at one extra dump cell V * S * S, which nothing reads."""
    pixel = np.asarray(pixel)
    views, count = np.shape(depth)
    if pixel.shape != (views, count, 2) or np.shape(valid) != (count,):
        raise ValueError(f"shapes disagree: pixel {pixel.shape}, depth {(views, count)}, valid {np.shape(valid)}; "
                         "expected (V, P, 2), (V, P), (P,)")
    considered = np.broadcast_to(np.asarray(valid, dtype=bool), (views, count))
    if inside is not None:
        if np.shape(inside) != (views, count):
            raise ValueError(f"inside has shape {np.shape(inside)}, expected {(views, count)}")
        considered = considered & inside
    u = pixel[..., 0].astype(np.int64)
    v = pixel[..., 1].astype(np.int64)
    # a pixel outside the image would alias into another pixel or view: refuse it rather than guess
    off_image = considered & ((u < 0) | (u >= image_size) | (v < 0) | (v >= image_size))
    if off_image.any():
        view, point = np.argwhere(off_image)[0]
        raise ValueError(f"point {point} in view {view} has pixel {tuple(pixel[view, point].tolist())} outside the "
                         f"{image_size}x{image_size} image; pass `inside` or clip the pixels")
    cell = (np.arange(views, dtype=np.int64)[:, None] * image_size + v) * image_size + u
    return np.where(considered, cell, views * image_size * image_size), considered


def _sortable_bits(depth) -> np.ndarray:
    """uint32 whose unsigned order is the float32 order of depth (negative values included)."""
    # adding +0.0 turns -0.0 into +0.0, so the two zeros tie as they compare equal
    bits = (np.asarray(depth, dtype=np.float32) + np.float32(0.0)).view(np.uint32)
    return np.where(bits >> np.uint32(31), ~bits, bits | np.uint32(0x80000000))
