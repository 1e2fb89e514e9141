"""Point-cloud preprocessing of design §2: organized grids and unorganized clouds to clean points.

Arrays in, arrays out; failures are ValueError with the reason only (readers add the path).
Open3D does the robust parts (RANSAC plane, DBSCAN), fpsample farthest-point sampling, PIL resizes RGB.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import open3d as o3d
from PIL import Image

from ..shared import strict
from ..shared.errors import ConfigError, first_line
from .background import belt_box, constant_background, rigid_transform

# Open3D reports through its own logger; errors reach us as empty results, which we check.
o3d.utility.set_verbosity_level(o3d.utility.VerbosityLevel.Error)


BACKGROUNDS = ("plane", "belt-box", "none")
SQUARING = ("pad", "stretch")


@dataclass(frozen=True, kw_only=True)
class PreprocessOptions:
    """How one sample is cleaned. Defaults are the literature's for MVTec 3D-AD (design §2), in metres.

    Every length is in the dataset's own unit (MVTec 3D-AD metres, raw Eyecandies Blender units, Real3D-AD
    millimetres): datasets.yaml sets them per dataset.
    """

    image_size: int = 336           # organized grids are resized to image_size x image_size (nearest)
    square: str = "pad"             # non-square grids: pad with missing pixels to a square first, or stretch
    max_points: int = 336 * 336     # unorganized clouds above this are farthest-point sampled
    min_points: int = 100           # fewer valid points than this is a bad sample
    background: str = "plane"       # plane (RANSAC on the grid border) | belt-box (Eyecandies) | none
    plane_border: int = 10          # border width in pixels (of the resized grid)
    plane_distance: float = 0.005   # points this close to the plane are background
    plane_iterations: int = 1000
    belt_height: float = 0.02       # belt-box: points at most this far above the belt are background
    belt_length: float = 1.8        # belt-box: box length along the belt from its bottom end
    belt_half_width: float = 1.0    # belt-box: box half-width across the belt (the walls lie beyond)
    apply_pose: bool = False        # raw Eyecandies: move points into the release's world frame (pose.txt)
    cleanup: bool = False           # keep only the largest DBSCAN cluster
    cluster_eps: float = 0.006
    cluster_min_points: int = 30
    flip: bool = True               # 180 degrees about X so the scanned surface faces the camera
    seed: int = 0

    def __post_init__(self):
        for name, allowed in (("background", BACKGROUNDS), ("square", SQUARING)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"preprocess option '{name}' must be one of {', '.join(allowed)}, "
                                  f"got {getattr(self, name)!r}")

    @classmethod
    def from_dict(cls, data: dict | None, source: str = "preprocess options") -> PreprocessOptions:
        """Build from a mapping (datasets.yaml `preprocess:`); an unknown key is an error naming it."""
        return strict.from_dict(cls, {} if data is None else data, source)


# Format defaults: Real3D-AD clouds are full object scans with no support plane and no sensor frame;
# raw Eyecandies scenes have belt walls, so their background is the belt box (lengths in Blender units).
FORMAT_DEFAULTS = {
    "mvtec3d": {},
    "eyecandies": {"background": "belt-box"},
    "real3d": {"background": "none", "flip": False},
}


def options_for_format(fmt: str, overrides: dict | None = None, source: str = "preprocess options") -> PreprocessOptions:
    """The format's defaults with a dataset's or class's overrides on top."""
    return PreprocessOptions.from_dict({**FORMAT_DEFAULTS.get(fmt, {}), **(overrides or {})}, source)


@dataclass(frozen=True)
class OrganizedResult:
    """Output of `preprocess_organized`; see `shared.Sample` for the meaning of each field."""

    points: np.ndarray        # (P, 3) float32
    point_labels: np.ndarray  # (P,) uint8
    grid_index: np.ndarray    # (P,) int32, row * S + col
    rgb: np.ndarray | None    # (S, S, 3) uint8
    grid_mask: np.ndarray     # (S, S) uint8 0/1


def check_finite_grid(xyz: np.ndarray) -> np.ndarray:
    """Return the (H, W) mask of measured pixels; raise on corrupt coordinates.

    A pixel is missing when all three coordinates are 0 (MVTec convention) or all three are NaN
    (common scanner convention). Inf anywhere, or NaN in only some coordinates, is corrupt data.
    """
    if np.isfinite(xyz).all():  # the usual case: no NaN, no inf, so only all-zero pixels are missing
        # three 2-D comparisons: `.any(axis=-1)` over a length-3 axis is several times slower
        return (xyz[..., 0] != 0) | (xyz[..., 1] != 0) | (xyz[..., 2] != 0)
    nan = np.isnan(xyz)
    bad = np.isinf(xyz).any(axis=-1) | (nan.any(axis=-1) & ~nan.all(axis=-1))
    if bad.any():
        raise ValueError(f"non-finite coordinates at {int(bad.sum())} pixel(s)")
    return ~nan.any(axis=-1) & (xyz != 0).any(axis=-1)


FLOAT32_MAX = float(np.finfo(np.float32).max)


def check_finite_points(points: np.ndarray) -> None:
    """Raise if any coordinate of an unorganized cloud is NaN or inf (there is no 'missing' there),
    or too large to survive the cast to float32 (it would become inf there)."""
    bad = ~np.isfinite(points).all(axis=1)
    if bad.any():
        raise ValueError(f"non-finite coordinates in {int(bad.sum())} point(s)")
    huge = (np.abs(points) > FLOAT32_MAX).any(axis=1)
    if huge.any():
        raise ValueError(f"coordinates beyond the float32 range in {int(huge.sum())} point(s)")


def resize_nearest(array: np.ndarray, size: int) -> np.ndarray:
    """Resize an (H, W[, C]) array to (size, size[, C]) by nearest neighbour, source index floor(i * H / size).

    This is the convention of torch's `interpolate(mode="nearest")`, which the literature's
    preprocessing uses; PIL samples pixel centres instead and picks different rows. Index
    selection also keeps xyz, validity and ground truth aligned by construction.
    """
    rows = np.arange(size) * array.shape[0] // size
    cols = np.arange(size) * array.shape[1] // size
    return array[rows][:, cols]


def resize_rgb(rgb: np.ndarray, size: int) -> np.ndarray:
    """Resize an (H, W, 3) uint8 image to (size, size, 3) bilinearly (it is an image, not geometry)."""
    if rgb.shape[:2] == (size, size):
        return rgb.copy()
    return np.asarray(Image.fromarray(rgb).resize((size, size), Image.BILINEAR))


def border_mask(height: int, width: int, border: int) -> np.ndarray:
    """(H, W) bool, True on the outer `border` pixels of the grid."""
    mask = np.ones((height, width), dtype=bool)
    mask[border:height - border, border:width - border] = False
    return mask


def fit_plane(points: np.ndarray, distance: float, iterations: int, seed: int) -> np.ndarray:
    """Plane (a, b, c, d), unit normal, fitted robustly: Open3D RANSAC, then least squares on its inliers.

    Border points that span no plane (one repeated point, a line) are a ValueError saying so, whatever
    Open3D returns for them (no inliers, or an error of its own).
    """
    if len(points) < 3:
        raise ValueError(f"cannot fit the background plane: only {len(points)} valid border point(s)")
    points = points.astype(np.float64)
    spread = np.linalg.svd(points - points.mean(axis=0), compute_uv=False)
    if not np.isfinite(spread).all() or spread[1] <= 1e-9 * max(spread[0], 1e-300):
        distinct = len(np.unique(points, axis=0))
        raise ValueError(f"cannot fit the background plane: the {len(points)} border points span no plane "
                         f"({distinct} distinct point(s)); is the background a constant placeholder?")
    o3d.utility.random.seed(seed)
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points))
    try:
        _, inliers = cloud.segment_plane(distance_threshold=distance, ransac_n=3, num_iterations=iterations)
    except RuntimeError as exc:
        raise ValueError(f"cannot fit the background plane: {first_line(exc)}") from None
    inliers = np.asarray(inliers, dtype=np.int64)
    if len(inliers) < 3:
        raise ValueError(f"cannot fit the background plane: {len(inliers)} of {len(points)} border points "
                         f"within {distance} of any plane")
    inlier_points = points[inliers]
    # The least-squares refit makes the plane independent of which random triple RANSAC kept.
    centre = inlier_points.mean(axis=0)
    normal = np.linalg.svd(inlier_points - centre, full_matrices=False)[2][-1]
    return np.append(normal, -normal @ centre)


def _region_border(region: np.ndarray, border: int) -> np.ndarray:
    """(S, S) bool: the outer `border` pixels of the data region (a padded grid's data sits inside padding)."""
    rows, cols = np.flatnonzero(region.any(axis=1)), np.flatnonzero(region.any(axis=0))
    out = np.zeros_like(region)
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    out[top:bottom, left:right] = border_mask(bottom - top, right - left, border)
    return out


def plane_distance(points: np.ndarray, plane: np.ndarray) -> np.ndarray:
    """(P,) unsigned distance of each point to the plane (a, b, c, d) with unit normal."""
    return np.abs(points.astype(np.float64) @ plane[:3] + plane[3])


def largest_cluster(points: np.ndarray, eps: float, min_points: int) -> np.ndarray:
    """(P,) bool, True for the points of the largest DBSCAN cluster (Open3D)."""
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points.astype(np.float64)))
    labels = np.asarray(cloud.cluster_dbscan(eps=eps, min_points=min_points))
    clustered = labels[labels >= 0]
    if clustered.size == 0:
        raise ValueError(f"no DBSCAN cluster (eps {eps}, min_points {min_points}) in {len(points)} points")
    return labels == np.bincount(clustered).argmax()


def flip_x180(points: np.ndarray) -> np.ndarray:
    """Rotate 180 degrees about the X axis: (x, y, z) -> (x, -y, -z)."""
    return points * np.array([1, -1, -1], dtype=points.dtype)


def farthest_point_order(points: np.ndarray, count: int) -> np.ndarray:
    """(count,) int64 indices in the order farthest-point sampling picks them (fpsample's bucket "QuickFPS").

    Exact farthest-point sampling: each pick is the point farthest from those already picked. The first
    pick is a deterministic function of the cloud (fpsample 0.3.3 maps `start_idx` through its k-d tree
    reordering, so it is not point 0); the released code starts at a random point, so nothing depends on
    which. The tree height grows with the cloud: 2.7M -> 112,896 points takes a few seconds
    (benchmarks/fps_bench.py), where Open3D's plain loop took minutes.
    """
    import fpsample  # imported here: only unorganized clouds over budget need it

    height = 3 if len(points) < 20_000 else 5 if len(points) < 200_000 else 7 if len(points) < 1_000_000 else 9
    order = fpsample.bucket_fps_kdline_sampling(np.ascontiguousarray(points, dtype=np.float32), count,
                                                h=height, start_idx=0)
    return np.asarray(order, dtype=np.int64)


def distinct_point_indices(points: np.ndarray) -> np.ndarray:
    """Sorted indices of the first of each set of points with equal coordinates, compared as float32 (as the
    store holds them; -0.0 equals 0.0)."""
    rows = np.ascontiguousarray(points, dtype=np.float32) + np.float32(0)  # + 0 turns -0.0 into 0.0
    _, first = np.unique(rows.view(np.dtype((np.void, rows.dtype.itemsize * 3))).ravel(), return_index=True)
    return np.sort(first)


def farthest_point_indices(points: np.ndarray, count: int) -> np.ndarray:
    """Sorted indices of min(count, distinct points) points, no two at the same coordinates, chosen by
    farthest-point sampling (see `farthest_point_order`); all of them when count >= len(points).

    Sampling picks every distinct point before it repeats one (its distance to the picked set is then 0),
    and fpsample then returns repeated indices: so a cloud with repeated points is sampled over one index
    per distinct point (`distinct_point_indices`), the count capped at their number."""
    if count >= len(points):
        return np.arange(len(points))
    order = farthest_point_order(points, count)
    if len(distinct_point_indices(points[order])) == count:  # the usual case: no repeated point picked
        return np.sort(order)
    distinct = distinct_point_indices(points)
    if count >= len(distinct):
        return distinct
    return np.sort(distinct[farthest_point_order(points[distinct], count)])


def pad_to_square(array: np.ndarray) -> np.ndarray:
    """(H, W, ...) padded with zeros (missing points, black pixels, good ground truth) to (L, L, ...), L = max(H, W),
    the data centred (the extra row or column of an odd difference at the end), as the released MVTec 3D-AD
    preprocessing pads before resizing. A square array is returned unchanged."""
    height, width = array.shape[:2]
    side = max(height, width)
    if height == width:
        return array
    top, left = (side - height) // 2, (side - width) // 2
    pad = [(top, side - height - top), (left, side - width - left)] + [(0, 0)] * (array.ndim - 2)
    return np.pad(array, pad)


def preprocess_organized(xyz: np.ndarray, rgb: np.ndarray | None, gt: np.ndarray | None,
                         options: PreprocessOptions, pose: np.ndarray | None = None) -> OrganizedResult:
    """Clean an organized scan: square, resize, drop missing and background points, optional cleanup, pose, flip.

    xyz: (H, W, 3) float32, missing = all zero, all NaN, or a converter's constant background point
    (`render.background.constant_background`); rgb: (H, W, 3) uint8 or None; gt: (H, W) with nonzero =
    anomalous, or None (all good). Shapes must already agree. A non-square grid is padded to a square
    with missing pixels (options.square "pad": geometry and the RGB image's aspect unchanged) or resized
    straight ("stretch"). pose: optional 4 x 4 rigid transform applied to the kept points after background
    removal (whose belt frame is the camera's), before the flip.
    """
    size = options.image_size
    present = check_finite_grid(xyz) & ~constant_background(xyz)
    region = np.ones(xyz.shape[:2], bool)
    if options.square == "pad":
        xyz, present, region = pad_to_square(xyz), pad_to_square(present), pad_to_square(region)
        rgb = None if rgb is None else pad_to_square(rgb)
        gt = None if gt is None else pad_to_square(gt)
    # pick the cells first, then convert: a scan holds 5-6x the cells of the grid
    measured = resize_nearest(present, size)
    region = resize_nearest(region, size)
    grid = np.nan_to_num(resize_nearest(xyz, size).astype(np.float32))
    mask = np.zeros((size, size), np.uint8) if gt is None else (resize_nearest(gt, size) > 0).astype(np.uint8)
    if measured.sum() < options.min_points:
        raise ValueError(f"{int(measured.sum())} valid points (need >= {options.min_points})")
    keep = measured.copy()
    if options.background == "plane":
        border = _region_border(region, options.plane_border) & measured
        plane = fit_plane(grid[border], options.plane_distance, options.plane_iterations, options.seed)
        keep &= plane_distance(grid, plane).reshape(size, size) > options.plane_distance
    elif options.background == "belt-box":
        keep &= belt_box(grid, measured, options.belt_height, options.belt_length, options.belt_half_width)
    flat_index = np.flatnonzero(keep)
    if flat_index.size < options.min_points:
        raise ValueError(f"{flat_index.size} valid points after background removal (need >= {options.min_points})")
    points = grid.reshape(-1, 3)[flat_index]
    if options.cleanup:
        in_cluster = largest_cluster(points, options.cluster_eps, options.cluster_min_points)
        flat_index, points = flat_index[in_cluster], points[in_cluster]
        if flat_index.size < options.min_points:
            raise ValueError(f"{flat_index.size} valid points after cluster cleanup (need >= {options.min_points})")
    if pose is not None:
        points = rigid_transform(points, pose)
    if options.flip:
        points = flip_x180(points)
    return OrganizedResult(
        points=np.ascontiguousarray(points, dtype=np.float32),
        point_labels=mask.reshape(-1)[flat_index].astype(np.uint8),
        grid_index=flat_index.astype(np.int32),
        rgb=None if rgb is None else resize_rgb(rgb, size),
        grid_mask=mask,
    )


def preprocess_unorganized(points: np.ndarray, labels: np.ndarray,
                           options: PreprocessOptions) -> tuple[np.ndarray, np.ndarray]:
    """Clean an unorganized cloud: check, farthest-point sample to max_points (labels kept; a cloud over the
    budget keeps distinct points only, see `farthest_point_indices`), optional flip.

    points: (P, 3); labels: (P,) nonzero = anomalous. Returns (points float32, labels uint8 0/1).
    """
    check_finite_points(points)
    if len(points) < options.min_points:
        raise ValueError(f"{len(points)} points (need >= {options.min_points})")
    if options.cleanup:
        in_cluster = largest_cluster(points, options.cluster_eps, options.cluster_min_points)
        points, labels = points[in_cluster], labels[in_cluster]
    chosen = farthest_point_indices(points, options.max_points)
    points, labels = points[chosen], labels[chosen]
    if options.flip:
        points = flip_x180(points)
    return np.ascontiguousarray(points, dtype=np.float32), (labels > 0).astype(np.uint8)
