"""Ground-truth mask views by splatting (design §3.5's cheaper equivalent of rendering them).

The rendered mask view is the cloud drawn unlit, anomalous points white and the others black, on
black, at the supersampled resolution; then area-averaged down and binarised at 0.5. Here the same
picture is computed without Open3D: every point covers the square of pixels that OpenGL (Mesa
llvmpipe, Open3D's legacy renderer) fills for a point of size N, the nearest point per pixel wins
(the depth test), and the pixel is white iff the winner is anomalous.

Footprint, measured by drawing single points with Open3D 0.20 on Mesa 22.3 llvmpipe: the vertex is snapped
to 1/256 pixel, then a point at sub-pixel position (u, v) (pixel centres at integers, v down) of size
N fills columns i with u - N/2 <= i < u + N/2 and rows j with v - N/2 < j <= v + N/2 (OpenGL counts
window rows upward, hence the other half-open side). An integer N always gives N x N pixels.
`tests/render/test_masks.py` checks this against Open3D, pixel for pixel, and whole mask views.
"""

from __future__ import annotations

import numpy as np

from .camera import Camera, view_coordinates

SUBPIXEL = 256  # llvmpipe's sub-pixel grid: vertex positions are snapped to 1/256 pixel
_EMPTY = np.iinfo(np.uint64).max


def splat_masks(points: np.ndarray, labels: np.ndarray, camera: Camera, rotations: np.ndarray, point_size: float,
                supersample: int, coordinates=None) -> np.ndarray:
    """Return masks (V, S, S) uint8 in {0, 1}: the mask views of design §3.5, drawn by splatting.

    points: (P, 3); labels: (P,) nonzero = anomalous; camera, rotations (V, 3, 3): as for the views;
    point_size: N in pixels at the supersampled resolution S * supersample; coordinates: the points'
    `view_coordinates`, if already computed. A cloud with no
    anomalous point gives all-zero masks at once. OpenGL's clipping (near and far planes, point
    centres outside the view) is not modelled: the fitted camera keeps every point clear of it.
    """
    views, size = len(rotations), camera.image_size
    labels = np.asarray(labels) != 0
    masks = np.zeros((views, size, size), np.uint8)
    if not labels.any():
        return masks
    u, v, depth = supersampled_positions(points, camera, rotations, supersample, coordinates)
    white, top, left = anomalous_on_top(u, v, depth, labels, point_size, size * supersample, block=supersample)
    boxed = binarise_blocks(white, supersample)
    rows = (top // supersample)[:, None, None] + np.arange(boxed.shape[1])[None, :, None]
    cols = (left // supersample)[:, None, None] + np.arange(boxed.shape[2])[None, None, :]
    masks[np.arange(views)[:, None, None], rows, cols] = boxed
    return masks


def supersampled_positions(points: np.ndarray, camera: Camera, rotations: np.ndarray, supersample: int,
                           coordinates=None):
    """(u, v, depth), each (V, P) float32: sub-pixel column and row (pixel centres at integers) in the
    S * supersample image that Open3D draws with `camera.intrinsic(supersample)`, and camera z.
    coordinates: the points' `view_coordinates`, if already computed."""
    x, y, depth = view_coordinates(points, camera, rotations) if coordinates is None else coordinates
    focal = np.float32(camera.focal * supersample)
    principal = np.float32(camera.image_size * supersample / 2 - 0.5)
    return focal * x / depth + principal, focal * y / depth + principal, depth


def anomalous_on_top(u: np.ndarray, v: np.ndarray, depth: np.ndarray, labels: np.ndarray, point_size: float,
                     size: int, block: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where the nearest point covering a pixel is anomalous, in one box per view that holds every such pixel.

    u, v: (V, P) float sub-pixel position (u = column, v = row, pixel centres at integers) in an image
    of size x size pixels; depth: (V, P) float camera z, points at depth <= 0 are not drawn; labels:
    (P,) bool; point_size: N (module docstring); block: box corners and sides are multiples of it.
    Returns (white (V, H, W) bool, top (V,) int, left (V,) int): pixel (top[k] + i, left[k] + j) of
    view k is white iff white[k, i, j]; every pixel outside the boxes is not. Nearest = smallest
    depth, ties to the lower point index (OpenGL's depth test keeps the first point drawn).

    No loop over points or views. Only pixels under an anomalous point's footprint can be white, so
    the work stays in a box around those (same shape in every view, placed per view). Each point
    competing there writes one key (depth bits, point index, label) into the cell of its footprint's
    first pixel (`np.minimum.at`); a sliding minimum of the footprint's height down the rows, then of
    its width along the columns, hands each pixel the smallest key among the points covering it.
    """
    views, count = np.shape(depth)
    depth = np.asarray(depth, np.float32)
    labels = np.asarray(labels, bool)
    col0, cols, row0, rows = footprints(u, v, point_size)
    drawn = (depth > 0) & (col0 + cols > 0) & (col0 < size) & (row0 + rows > 0) & (row0 < size)
    top, height = _boxes(row0, rows, drawn & labels, size, block)
    left, width = _boxes(col0, cols, drawn & labels, size, block)
    if height == 0 or width == 0:
        return np.zeros((views, height, width), bool), top, left
    # the points whose footprint reaches into their view's box compete there
    near = drawn & (row0 < top[:, None] + height) & (row0 + rows > top[:, None]) \
        & (col0 < left[:, None] + width) & (col0 + cols > left[:, None])
    view, point = np.nonzero(near)
    # positive float32 depths order like their bits; the point index below them breaks ties, and the
    # label in the lowest bit rides along without changing the order (indices are distinct)
    key = ((depth[near].view(np.uint32).astype(np.uint64) << np.uint64(32))
           | (point.astype(np.uint64) << np.uint64(1)) | labels[point].astype(np.uint64))
    row0, rows = row0[near] - top[view], rows[near]
    col0, cols = col0[near] - left[view], cols[near]
    best = np.full((views, height, width), _EMPTY, np.uint64)
    # an integer size gives one footprint shape; a fractional one up to four (N rounded down or up)
    for shape_rows, shape_cols in _shapes(point_size):
        here = (rows == shape_rows) & (cols == shape_cols)
        if not here.any():
            continue
        # starts[:, r + shape_rows - 1, c + shape_cols - 1] holds the footprints whose first pixel is (r, c)
        starts = np.full((views, height + shape_rows - 1, width + shape_cols - 1), _EMPTY, np.uint64)
        np.minimum.at(starts, (view[here], row0[here] + shape_rows - 1, col0[here] + shape_cols - 1), key[here])
        covered = _sliding_min(_sliding_min(starts, shape_rows, axis=1), shape_cols, axis=2)
        np.minimum(best, covered, out=best)
    return (best != _EMPTY) & (best & np.uint64(1)).astype(bool), top, left


def _boxes(first: np.ndarray, extent: np.ndarray, anomalous: np.ndarray, size: int, block: int):
    """Per-view start (V,) and one common length of boxes along one image axis that hold every pixel an
    anomalous point covers, clipped to [0, size) and aligned to `block` (size must be a multiple)."""
    low = np.where(anomalous, first, size).min(axis=1).clip(0, size) // block * block
    high = -(-np.where(anomalous, first + extent, 0).max(axis=1).clip(0, size) // block) * block
    length = int(np.maximum(high - low, 0).max())
    return np.minimum(low, size - length), length


def _shapes(point_size: float) -> list[tuple[int, int]]:
    """(rows, columns) of every footprint a point of this size can have."""
    whole = int(np.floor(point_size))
    sides = [whole] if whole == point_size else [whole, whole + 1]
    return [(r, c) for r in sides for c in sides if r > 0 and c > 0]


def footprints(u: np.ndarray, v: np.ndarray, point_size: float):
    """(first column, columns, first row, rows), each int32 like u: the pixels a point of size N fills.

    Columns i with u - N/2 <= i < u + N/2, rows j with v - N/2 < j <= v + N/2, after snapping u and v
    to the 1/SUBPIXEL grid (module docstring). u, v: finite; float32 is exact for |u|, |v| < 2**15, and
    farther positions (no image is that large) are clipped there, which keeps them off the image.
    """
    half = np.float32(point_size / 2)
    limit, grid = np.float32(2**15), np.float32(SUBPIXEL)
    u = np.rint(np.clip(np.asarray(u, np.float32), -limit, limit) * grid) / grid
    v = np.rint(np.clip(np.asarray(v, np.float32), -limit, limit) * grid) / grid
    col0, col1 = np.ceil(u - half), np.ceil(u + half)
    row0, row1 = np.floor(v - half) + 1, np.floor(v + half) + 1
    return (col0.astype(np.int32), (col1 - col0).astype(np.int32),
            row0.astype(np.int32), (row1 - row0).astype(np.int32))


def _sliding_min(cells: np.ndarray, width: int, axis: int) -> np.ndarray:
    """out[k] = min(cells[k .. k + width - 1]) along `axis` (length n - width + 1).

    Sparse-table doubling: log2(width) pairwise minima, then two overlapping windows.
    """
    n = cells.shape[axis]

    def part(array, start, stop):
        index = [slice(None)] * array.ndim
        index[axis] = slice(start, stop)
        return array[tuple(index)]

    span, runs = 1, cells  # runs[k] = min(cells[k .. k + span - 1])
    while 2 * span <= width:
        runs = np.minimum(part(runs, 0, n - 2 * span + 1), part(runs, span, n - span + 1))
        span *= 2
    length = n - width + 1
    if span == width:
        return part(runs, 0, length)
    return np.minimum(part(runs, 0, length), part(runs, width - span, width - span + length))


def binarise_blocks(white: np.ndarray, factor: int) -> np.ndarray:
    """Return (V, S, S) uint8: 1 where at least half of a factor x factor block of `white` (V, S*f, S*f) is set.

    The rendered path's area average (PIL box reduction) then `>= 0.5`, counted in integers.
    """
    views, height, width = white.shape
    blocks = white.reshape(views, height // factor, factor, width // factor, factor)
    counts = blocks.sum(axis=(2, 4), dtype=np.int32)
    return (2 * counts >= factor * factor).astype(np.uint8)
