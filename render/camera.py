"""One explicit pinhole camera per sample (design §3.4) and the projection of points into every view.

Convention (OpenCV, as Open3D's PinholeCameraParameters): camera x right, y down, z forward;
pixel centres at integer coordinates, principal point (S/2 - 0.5, S/2 - 0.5). View k sees the
cloud rotated about its centre c by R_k:  X_cam = B R_k (X - c) + (0, 0, D),  B = diag(1, -1, -1),
so the unrotated view looks at the flipped scan's front (the scanner's own viewpoint).

The camera is derived from the cloud alone (bounding-box centre, bounding-sphere radius), so a
store's `points/xyz` plus the root attribute `camera` reproduce every projection.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FRONT = np.diag([1.0, -1.0, -1.0])


@dataclass(frozen=True)
class Camera:
    """image_size: S (output pixels); focal: f in pixels at S; centre: (3,) cloud centre; distance: D."""

    image_size: int
    focal: float
    centre: tuple[float, float, float]
    distance: float

    def intrinsic(self, scale: int = 1) -> np.ndarray:
        """(3, 3) intrinsic matrix for an image `scale` times larger than S (supersampled rendering)."""
        size = self.image_size * scale
        principal = size / 2 - 0.5
        return np.array([[self.focal * scale, 0, principal], [0, self.focal * scale, principal], [0, 0, 1.0]])

    def extrinsics(self, rotations: np.ndarray) -> np.ndarray:
        """(V, 4, 4) world-to-camera transforms, one per view rotation (V, 3, 3)."""
        out = np.tile(np.eye(4), (len(rotations), 1, 1))
        turn = FRONT @ rotations
        out[:, :3, :3] = turn
        out[:, :3, 3] = -(turn @ np.asarray(self.centre)) + np.array([0, 0, self.distance])
        return out


def camera_settings(fov_degrees: float = 30.0, margin: float = 1.1) -> dict:
    """The store attribute `camera`: how every sample's camera is derived."""
    return {"model": "pinhole, OpenCV axes", "fov_degrees": fov_degrees, "margin": margin,
            "centre": "bounding-box centre of the valid points", "radius": "max distance of a valid point to it",
            "distance": "margin * radius / sin(fov / 2)", "focal": "(S / 2) / tan(fov / 2)",
            "principal_point": "S / 2 - 0.5"}


def fit_camera(points: np.ndarray, image_size: int, fov_degrees: float = 30.0, margin: float = 1.1) -> Camera:
    """Camera whose view cone holds the cloud's bounding sphere (times `margin`) from every direction."""
    points = np.asarray(points, dtype=np.float64)
    centre = (points.min(axis=0) + points.max(axis=0)) / 2
    radius = max(float(np.linalg.norm(points - centre, axis=1).max()), 1e-9)
    half = np.radians(fov_degrees) / 2
    return Camera(image_size=image_size, focal=float(image_size / 2 / np.tan(half)),
                  centre=tuple(float(c) for c in centre), distance=float(margin * radius / np.sin(half)))


def view_coordinates(points: np.ndarray, camera: Camera, rotations: np.ndarray):
    """Camera coordinates (x, y, z) of (P, 3) points in V views, each (V, P) float32.

    Element-wise float32 arithmetic in a fixed order (no BLAS, whose summation order and FMA use vary
    with the machine and thread count), so the same float32 points give bit-identical results anywhere:
    `render verify` recomputes the stored pixels exactly. X_cam = B R_k (X - c) + (0, 0, D).
    """
    turn = (FRONT @ np.asarray(rotations, np.float64)).astype(np.float32)[:, :, :, None]  # (V, 3, 3, 1)
    offset = (np.asarray(points, np.float32) - np.asarray(camera.centre, np.float32)).T  # (3, P)
    dx, dy, dz = np.ascontiguousarray(offset)
    x, y, z = (turn[:, i, 0] * dx + turn[:, i, 1] * dy + turn[:, i, 2] * dz for i in range(3))
    return x, y, z + np.float32(camera.distance)


def project(points: np.ndarray, camera: Camera, rotations: np.ndarray, coordinates=None):
    """Project (P, 3) points into V views (`coordinates`: their `view_coordinates`, if already computed).

    Returns pixel (V, P, 2) int16 as (u = column, v = row), clipped to the image; depth (V, P)
    float32 camera z; inside (V, P) bool, False where the unclipped pixel fell outside the image.
    Computed in float32 by `view_coordinates` (reproducible bit for bit); a point exactly on a pixel
    boundary rounds half to even.
    """
    x, y, depth = view_coordinates(points, camera, rotations) if coordinates is None else coordinates
    focal, principal = np.float32(camera.focal), np.float32(camera.image_size / 2 - 0.5)
    last = camera.image_size - 1
    u = np.rint(focal * x / depth + principal)
    v = np.rint(focal * y / depth + principal)
    inside = (depth > 0) & (u >= 0) & (u <= last) & (v >= 0) & (v <= last)
    pixel = np.stack([np.clip(u, 0, last), np.clip(v, 0, last)], axis=-1).astype(np.int16)
    return pixel, depth, inside
