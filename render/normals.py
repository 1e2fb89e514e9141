"""Normals the data already gives (issue 24, design §3.2): from the organized grid a scan came from, or from the
k-NN graph the store builds, instead of Open3D's own 30-neighbour search (`sample_render.estimate_normals`).
`grid_normals` crosses central differences of the neighbouring cells, `grid_pca_normals` fits a plane to the
cells within a disc (`grid_pca_normals_within`, what `--normals grid` uses: the 3-cell disc, about Open3D's 30
nearest on a filled grid, where Open3D's search radius reaches that far, else `grid_pca_normals_near`, the
cells of that disc within the radius, Open3D's own neighbours), `graph_normals` fits one to each point's k-NN
row; benchmarks/normals_bench.py measures their time and what they change in the views.

Normals only shade the views. The renderers turn every normal toward the eye before lighting it
(`render/splat.py` `shade`, `render/rasterize.py`), so a normal's sign never changes an image; Open3D leaves
the sign to its eigen solver (77-98% of its normals have n_z > 0 on the synthetic classes). Both estimators
here make the sign deterministic: n_z >= 0, toward the sensor of our scans (+z after preprocessing, and the
camera side of `render/synthetic/dense.py`). A point with no usable neighbourhood gets (0, 0, 1).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

FALLBACK = np.array([0.0, 0.0, 1.0])  # toward the sensor: the normal of a cell or point with too few neighbours
MAX_NN = 30  # Open3D's neighbours at most, as render_sample asks (sample_render.estimate_normals)
# a disc of radius 3 cells holds 29 cells, the next (sqrt 10) 37: the disc nearest MAX_NN on a filled grid
MAX_DISC_CELLS = 3.0


def grid_normals(xyz_grid, valid) -> np.ndarray:
    """Return (H, W, 3) float64 unit normals of an organized cloud, zeros at invalid cells.

    xyz_grid: (H, W, 3) float, the point of each cell; valid: (H, W) bool, False for holes. Tangents are
    central differences along the columns and the rows, one-sided where one neighbour is a hole or outside the
    grid; the normal is their cross product, oriented n_z >= 0. A valid cell with no valid neighbour along
    the columns or along the rows (or collinear tangents) gets (0, 0, 1)."""
    xyz = np.asarray(xyz_grid, np.float64)
    valid = np.asarray(valid, bool)
    along_columns = _tangent(xyz, valid, axis=1)
    along_rows = _tangent(xyz, valid, axis=0)
    return _finish(np.cross(along_columns, along_rows), valid)


def grid_normals_of_points(points, grid_index, grid_hw, estimator=None) -> np.ndarray:
    """Return (P, 3) normals of a cloud that came from an organized grid by `estimator(xyz_grid, valid)`
    (`grid_normals` if None, or `grid_pca_normals`): points (P, 3), grid_index (P,) int, each point's cell
    (row-major in grid_hw = (H, W), as `Sample.grid_index`), distinct cells. The estimator sees the grid's
    rectangle that holds the points (the cells outside are holes, as the estimators treat the grid's border:
    the same normals, on a third of the cells for a scan that fills a third of its grid)."""
    estimator = estimator or grid_normals
    columns = int(grid_hw[1])
    cells = np.asarray(grid_index, np.int64)
    if len(cells) == 0:
        return np.zeros((0, 3))
    row, column = np.divmod(cells, columns)
    top, left = row.min(), column.min()
    shape = (int(row.max() - top) + 1, int(column.max() - left) + 1)
    inside = (row - top) * shape[1] + (column - left)
    xyz = np.zeros((shape[0] * shape[1], 3))
    valid = np.zeros(shape[0] * shape[1], bool)
    xyz[inside] = points
    valid[inside] = True
    return estimator(xyz.reshape(*shape, 3), valid.reshape(shape)).reshape(-1, 3)[inside]


def _tangent(xyz, valid, axis):
    """(H, W, 3) difference to the next minus the previous cell along axis: central where both are valid,
    one-sided where one is, zero where neither is."""
    before, after = np.zeros_like(xyz), np.zeros_like(xyz)
    has_before, has_after = np.zeros_like(valid), np.zeros_like(valid)
    inner = (slice(None),) * axis
    before[inner + (slice(1, None),)] = xyz[inner + (slice(None, -1),)]
    after[inner + (slice(None, -1),)] = xyz[inner + (slice(1, None),)]
    has_before[inner + (slice(1, None),)] = valid[inner + (slice(None, -1),)]
    has_after[inner + (slice(None, -1),)] = valid[inner + (slice(1, None),)]
    has_before &= valid
    has_after &= valid
    start = np.where(has_before[..., None], before, xyz)
    end = np.where(has_after[..., None], after, xyz)
    return end - start


def _finish(normals, valid):
    """Normalise (..., 3), orient n_z >= 0, (0, 0, 1) where the length is 0, zeros where not valid."""
    length = np.linalg.norm(normals, axis=-1, keepdims=True)
    unit = np.where(length > 0, normals / np.where(length > 0, length, 1), FALLBACK)
    unit = np.where(unit[..., 2:] < 0, -unit, unit)
    return np.where(valid[..., None], unit, 0.0)


def grid_normals_naive(xyz_grid, valid) -> np.ndarray:
    """`grid_normals` by a plain loop over the cells."""
    xyz = np.asarray(xyz_grid, np.float64)
    valid = np.asarray(valid, bool)
    rows, columns = valid.shape
    out = np.zeros((rows, columns, 3))

    def tangent(i, j, di, dj):
        previous, following = (i - di, j - dj), (i + di, j + dj)
        ok_previous = 0 <= previous[0] < rows and 0 <= previous[1] < columns and valid[previous]
        ok_following = 0 <= following[0] < rows and 0 <= following[1] < columns and valid[following]
        return (xyz[following] if ok_following else xyz[i, j]) - (xyz[previous] if ok_previous else xyz[i, j])

    for i in range(rows):
        for j in range(columns):
            if not valid[i, j]:
                continue
            normal = np.cross(tangent(i, j, 0, 1), tangent(i, j, 1, 0))
            length = np.linalg.norm(normal)
            normal = normal / length if length > 0 else FALLBACK.copy()
            out[i, j] = -normal if normal[2] < 0 else normal
    return out


def _disc(radius_cells: float) -> np.ndarray:
    """(2R + 1, 2R + 1) float 0/1 kernel of the cells within radius_cells of the centre (R its floor)."""
    reach = int(np.floor(radius_cells))
    i, j = np.mgrid[-reach:reach + 1, -reach:reach + 1]
    return (i * i + j * j <= radius_cells**2).astype(np.float64)


def grid_spacing(xyz_grid, valid) -> float:
    """The median distance between valid cells side by side along the rows or the columns of (H, W, 3) xyz_grid
    (the square root of the median squared distance: the same for an odd count); nan where no two valid cells
    are side by side."""
    xyz = np.asarray(xyz_grid, np.float64)
    valid = np.asarray(valid, bool)
    squares = []
    for step, both in ((xyz[:, 1:] - xyz[:, :-1], valid[:, 1:] & valid[:, :-1]),
                       (xyz[1:] - xyz[:-1], valid[1:] & valid[:-1])):
        squares.append((step[..., 0] ** 2 + step[..., 1] ** 2 + step[..., 2] ** 2)[both])  # no norm: 2x faster
    squares = np.concatenate(squares)
    return float(np.sqrt(np.median(squares))) if len(squares) else float("nan")


def open3d_disc_cells(xyz_grid, valid, radius: float) -> float:
    """The disc radius in cells that stands for Open3D's hybrid search (radius, at most MAX_NN neighbours) on an
    organized grid: radius over `grid_spacing`, at most MAX_DISC_CELLS; MAX_DISC_CELLS where no spacing is known.
    """
    spacing = grid_spacing(xyz_grid, valid)
    if not spacing > 0:
        return MAX_DISC_CELLS
    return min(radius / spacing, MAX_DISC_CELLS)


def grid_pca_normals_within(xyz_grid, valid, radius: float) -> np.ndarray:
    """What `--normals grid` renders with (render/sample_render.py, radius as Open3D gets it): where Open3D's
    search of `radius` reaches past MAX_DISC_CELLS (`open3d_disc_cells`), its 30 nearest are about the 3-cell
    disc: `grid_pca_normals` over it; where it reaches less, the cells of that disc whose point lies within
    `radius` of the cell's (`grid_pca_normals_near`), Open3D's own neighbours, which change point by point
    where the radius is near a whole number of cells."""
    if open3d_disc_cells(xyz_grid, valid, radius) >= MAX_DISC_CELLS:
        return grid_pca_normals(xyz_grid, valid, MAX_DISC_CELLS)
    return grid_pca_normals_near(xyz_grid, valid, radius)


def _disc_offsets(radius_cells: float) -> list[tuple[int, int]]:
    """(row, column) offsets of the cells within radius_cells of a cell, itself included."""
    return [(int(i), int(j)) for i, j in zip(*np.nonzero(_disc(radius_cells))) for i, j in
            [(i - int(np.floor(radius_cells)), j - int(np.floor(radius_cells)))]]


def grid_pca_normals_near(xyz_grid, valid, radius: float, radius_cells: float = MAX_DISC_CELLS) -> np.ndarray:
    """Return (H, W, 3) float64 unit normals by PCA of the valid cells within radius_cells of each cell whose
    point is nearer than `radius` to the cell's own (itself included), zeros at invalid cells; n_z >= 0, (0, 0, 1)
    with fewer than 3 such cells. One pass per offset of the disc (29 for 3 cells), coordinates relative to
    the cell's point."""
    xyz = np.asarray(xyz_grid, np.float64)
    valid = np.asarray(valid, bool)
    rows, columns = valid.shape
    reach = int(np.floor(radius_cells))
    padded = np.pad(xyz, ((reach, reach), (reach, reach), (0, 0)))
    padded_valid = np.pad(valid, reach)
    count = np.zeros((rows, columns))
    first = np.zeros((rows, columns, 3))
    second = np.zeros((rows, columns, 6))  # xx yy zz xy xz yz
    a, b = [0, 1, 2, 0, 0, 1], [0, 1, 2, 1, 2, 2]
    for di, dj in _disc_offsets(radius_cells):
        window = (slice(reach + di, reach + di + rows), slice(reach + dj, reach + dj + columns))
        step = padded[window] - xyz
        near = padded_valid[window] & valid & (np.einsum("hwk,hwk->hw", step, step) < radius * radius)
        step *= near[..., None]
        count += near
        first += step
        second += step[..., a] * step[..., b]
    share = 1 / np.maximum(count, 1)
    mean = first * share[..., None]
    moments = second * share[..., None] - mean[..., a] * mean[..., b]
    normals = smallest_eigenvector(*(moments[..., k][valid] for k in range(6)))
    normals[count[valid] < 3] = 0.0
    out = np.zeros(xyz.shape)
    out[valid] = normals
    return _finish(out, valid)


def grid_pca_normals_near_naive(xyz_grid, valid, radius: float, radius_cells: float = MAX_DISC_CELLS) -> np.ndarray:
    """`grid_pca_normals_near` by a plain loop over the cells and `np.linalg.eigh`."""
    xyz = np.asarray(xyz_grid, np.float64)
    valid = np.asarray(valid, bool)
    rows, columns = valid.shape
    reach = int(np.floor(radius_cells))
    out = np.zeros((rows, columns, 3))
    for i in range(rows):
        for j in range(columns):
            if not valid[i, j]:
                continue
            near = [xyz[a, b] for a in range(max(0, i - reach), min(rows, i + reach + 1))
                    for b in range(max(0, j - reach), min(columns, j + reach + 1))
                    if valid[a, b] and (a - i) ** 2 + (b - j) ** 2 <= radius_cells**2
                    and np.sum((xyz[a, b] - xyz[i, j]) ** 2) < radius * radius]
            if len(near) < 3:
                out[i, j] = FALLBACK
                continue
            centred = np.array(near) - np.mean(near, axis=0)
            values, vectors = np.linalg.eigh(centred.T @ centred)
            normal = vectors[:, np.argmin(values)]
            out[i, j] = -normal if normal[2] < 0 else normal
    return out


def grid_pca_normals(xyz_grid, valid, radius_cells: float = 3.0) -> np.ndarray:
    """Return (H, W, 3) float64 unit normals by PCA of the valid cells within radius_cells of each cell (the cell
    itself included), zeros at invalid cells; oriented n_z >= 0, (0, 0, 1) with fewer than 3 such cells.

    Open3D's search (at most 30 neighbours within the radius) on a filled grid takes about the disc of radius 3
    cells (29 cells); the covariance comes from nine moment images summed over the disc (one correlation each),
    the eigenvector in closed form (`smallest_eigenvector`)."""
    valid = np.asarray(valid, bool)
    xyz = np.asarray(xyz_grid, np.float64)
    xyz = np.where(valid[..., None], xyz - (xyz[valid].mean(axis=0) if valid.any() else 0), 0.0)
    kernel = _disc(radius_cells)

    def summed(image):
        return ndimage.correlate(image, kernel, mode="constant", cval=0.0)

    count = summed(valid.astype(np.float64))
    share = 1 / np.maximum(count, 1)
    x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    mx, my, mz = summed(x) * share, summed(y) * share, summed(z) * share
    moments = [summed(a * b) * share - ma * mb for a, b, ma, mb in
               ((x, x, mx, mx), (y, y, my, my), (z, z, mz, mz), (x, y, mx, my), (x, z, mx, mz), (y, z, my, mz))]
    normals = smallest_eigenvector(*(m[valid] for m in moments))
    normals[count[valid] < 3] = 0.0
    out = np.zeros(xyz.shape)
    out[valid] = normals
    return _finish(out, valid)


def grid_pca_normals_naive(xyz_grid, valid, radius_cells: float = 3.0) -> np.ndarray:
    """`grid_pca_normals` by a plain loop over the cells and `np.linalg.eigh`."""
    return grid_pca_normals_near_naive(xyz_grid, valid, np.inf, radius_cells)  # every disc cell is within inf


def graph_normals(points, neighbours) -> np.ndarray:
    """Return (P, 3) float64 unit normals by PCA of each point's neighbours, zeros for padding rows.

    points: (P, 3) float; neighbours: (P, k) int, the k-NN graph (`render.graph.knn_graph`'s indices: itself
    first, -1 for missing columns and padding rows). The normal is the eigenvector of the smallest eigenvalue
    of the covariance of the listed points (itself included), oriented n_z >= 0; a row listing fewer than
    3 points gets (0, 0, 1). Open3D's estimate_normals does the same on its own 30-neighbour search."""
    points = np.asarray(points, np.float64)
    neighbours = np.asarray(neighbours)
    listed = neighbours >= 0
    count = listed.sum(axis=1)
    weight = listed / np.maximum(count, 1)[:, None]  # (P, k): 1 / count where listed
    rows = np.maximum(neighbours, 0)
    # one coordinate at a time, relative to the point itself (no cancellation far from the origin)
    x, y, z = ((points[rows, axis] - points[:, axis, None]) for axis in range(3))
    mx, my, mz = ((c * weight).sum(axis=1) for c in (x, y, z))
    x, y, z = ((c - m[:, None]) * listed for c, m in ((x, mx), (y, my), (z, mz)))
    xx, yy, zz = (np.einsum("pk,pk->p", c, c) for c in (x, y, z))
    xy, xz, yz = (np.einsum("pk,pk->p", c, d) for c, d in ((x, y), (x, z), (y, z)))
    normals = smallest_eigenvector(xx, yy, zz, xy, xz, yz)
    normals[count < 3] = 0.0
    return _finish(normals, count > 0)


def smallest_eigenvector(xx, yy, zz, xy, xz, yz) -> np.ndarray:
    """Return (P, 3) unit eigenvectors of the smallest eigenvalue of the symmetric 3 x 3 matrices with these
    (P,) entries, zeros where the matrix is a multiple of the identity (every direction is one).

    The eigenvalue in closed form (the trigonometric solution of the characteristic cubic), the vector as the
    longest cross product of two rows of A - lambda I, which span the plane orthogonal to it; element-wise,
    about 5x faster than `np.linalg.eigh` on (P, 3, 3)."""
    scale = np.max(np.abs([xx, yy, zz, xy, xz, yz]), axis=0)
    scale = np.where(scale > 0, scale, 1)
    xx, yy, zz, xy, xz, yz = (c / scale for c in (xx, yy, zz, xy, xz, yz))
    q = (xx + yy + zz) / 3
    off = xy**2 + xz**2 + yz**2
    p = np.sqrt(((xx - q) ** 2 + (yy - q) ** 2 + (zz - q) ** 2 + 2 * off) / 6)
    inverse = 1 / np.where(p > 0, p, 1)
    a, b, c = (xx - q) * inverse, (yy - q) * inverse, (zz - q) * inverse
    d, e, f = xy * inverse, xz * inverse, yz * inverse
    determinant = a * (b * c - f * f) - d * (d * c - f * e) + e * (d * f - b * e)
    smallest = q + 2 * p * np.cos(np.arccos(np.clip(determinant / 2, -1, 1)) / 3 + 2 * np.pi / 3)
    r0 = np.stack([xx - smallest, xy, xz], axis=1)
    r1 = np.stack([xy, yy - smallest, yz], axis=1)
    r2 = np.stack([xz, yz, zz - smallest], axis=1)
    crosses = np.stack([np.cross(r0, r1), np.cross(r0, r2), np.cross(r1, r2)], axis=1)  # (P, 3 pairs, 3)
    lengths = np.sqrt(np.einsum("pci,pci->pc", crosses, crosses))
    best = lengths.argmax(axis=1)
    at = np.arange(len(best))
    vector, length = crosses[at, best], lengths[at, best]
    return np.where((length > 0)[:, None], vector / np.where(length > 0, length, 1)[:, None], 0.0)


def graph_normals_naive(points, neighbours) -> np.ndarray:
    """`graph_normals` by a plain loop over the points."""
    points = np.asarray(points, np.float64)
    out = np.zeros((len(points), 3))
    for j, row in enumerate(np.asarray(neighbours)):
        near = points[[i for i in row if i >= 0]]
        if len(near) == 0:
            continue
        if len(near) < 3:
            out[j] = FALLBACK
            continue
        centred = near - near.mean(axis=0)
        values, vectors = np.linalg.eigh(centred.T @ centred)
        normal = vectors[:, np.argmin(values)]
        out[j] = -normal if normal[2] < 0 else normal
    return out
