"""Background removal for organized grids besides the RANSAC plane: converter sentinels and the belt box.

Arrays in, arrays out; failures are ValueError with the reason only (readers add the path).
"""

from __future__ import annotations

import numpy as np

SENTINEL_FRACTION = 0.01  # a coordinate triple repeated at this fraction of the pixels is a sentinel


def constant_background(xyz: np.ndarray) -> np.ndarray:
    """(H, W) bool, True at pixels holding the one coordinate triple a converter wrote for all background.

    The community conversion of Eyecandies to the MVTec 3D-AD layout (the one 3D-AD papers use) does not
    write zeros for the background: it writes one constant point (0, a, b) (the belt origin after its
    rotation back). A measured surface never returns the same point at distinct pixels, so an exact triple
    with x = 0, repeated at >= 1% of the pixels (at least 16), is recognised as "no point here".
    xyz: (H, W, 3) float.
    """
    height, width = xyz.shape[:2]
    candidates = xyz[..., 0] == 0
    threshold = max(16, int(SENTINEL_FRACTION * height * width))
    out = np.zeros((height, width), bool)
    if int(candidates.sum()) < threshold:
        return out
    yz = xyz[candidates][:, 1:]
    values, inverse, counts = np.unique(yz, axis=0, return_inverse=True, return_counts=True)
    top = int(counts.argmax())
    if counts[top] < threshold or not np.isfinite(values[top]).all() or not values[top].any():
        return out  # all-zero pixels are the ordinary "missing" convention, handled elsewhere
    out[candidates] = inverse.reshape(-1) == top
    return out


def _end_point(grid: np.ndarray, measured: np.ndarray, rows, column: int) -> np.ndarray:
    """The first measured point of `column` met walking through `rows` (bottom up or top down)."""
    for row in rows:
        if measured[row, column]:
            return grid[row, column].astype(np.float64)
    raise ValueError("belt box: the middle column has no measured pixel to lay the belt line through")


def belt_frame(grid: np.ndarray, measured: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(origin, along, up) of the conveyor belt, from an organized grid in camera coordinates.

    The belt line runs through the first measured pixels of the middle column from the bottom and from
    the top row (both on the belt, whose candy sits in the middle of the frame). The frame turns only about
    the camera's X axis (image columns run across the belt): along = that line's direction in the Y-Z plane
    (unit, pointing to the top row), up = the unit normal to it in the Y-Z plane that faces the camera.
    grid: (S, S, 3) camera coordinates (camera at the origin, looking along +Z); measured: (S, S) bool.
    """
    rows, cols = measured.shape
    middle = cols // 2
    bottom = _end_point(grid, measured, range(rows - 1, -1, -1), middle)
    top = _end_point(grid, measured, range(rows), middle)
    step = (top - bottom) * np.array([0.0, 1.0, 1.0])
    length = float(np.linalg.norm(step))
    if not np.isfinite(length) or length == 0:
        raise ValueError("belt box: the belt line's two ends coincide (degenerate grid)")
    along = step / length
    up = np.array([0.0, -along[2], along[1]])
    if up @ (-bottom) < 0:  # face the camera: the candy lies between the belt and the sensor
        up = -up
    return bottom, along, up


def belt_box(grid: np.ndarray, measured: np.ndarray, height: float, length: float, half_width: float) -> np.ndarray:
    """(S, S) bool, True for points of the object: above the belt and inside the box, in the belt's frame.

    The released Eyecandies preprocessing's background removal: the scenes have belt walls, so no single
    plane separates the candy. Kept: measured, more than `height` above the belt, at most `length` along the
    belt from its bottom end, at most `half_width` across from the belt line (all in the grid's units,
    Blender units for Eyecandies). See `belt_frame` for the frame.
    """
    origin, along, up = belt_frame(grid, measured)
    offset = grid.astype(np.float64) - origin
    above = offset @ up
    ahead = offset @ along
    across = offset[..., 0]
    return measured & (above > height) & (ahead <= length) & (np.abs(across) <= half_width)


def rigid_transform(points: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """(P, 3) points moved by a 4 x 4 rigid pose (R, t): R p + t. A pose that is not rigid is an error."""
    pose = np.asarray(pose, np.float64)
    if pose.shape != (4, 4) or not np.isfinite(pose).all():
        raise ValueError(f"pose must be a finite 4 x 4 matrix, got shape {pose.shape}")
    rotation = pose[:3, :3]
    if not np.allclose(rotation @ rotation.T, np.eye(3), atol=1e-4) or np.linalg.det(rotation) < 0 \
            or not np.allclose(pose[3], [0, 0, 0, 1]):
        raise ValueError("pose is not a rigid transform (rotation part not orthonormal, or last row not 0 0 0 1)")
    return points.astype(np.float64) @ rotation.T + pose[:3, 3]
