"""Render one preprocessed sample into its store row (SPEC 3, steps 2-7): views, masks (splatted by
`render/masks.py`, or rendered), projections, visibility, proxy and smoothing graph. Reads no files
and writes none: `render/build.py` does that.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import open3d as o3d

from pointad.render.camera import Camera, fit_camera, project
from pointad.render.graph import knn_graph, proxy_indices
from pointad.render.masks import splat_masks
from pointad.render.preprocess import farthest_point_indices
from pointad.render.rasterize import RENDERERS as OPEN3D_RENDERERS, DrawStyle, LegacyRasterizer, downsample
from pointad.render.splat import Cloud, draw_views
from pointad.render.view_plan import make_view_plan
from pointad.render.visibility import nearest_per_pixel, surface_visible
from pointad.shared.errors import ConfigError
from pointad.shared.sample import Sample
from pointad.shared.store import SampleArrays

GREY = 0.7
LIGHTS = {"on": (True, GREY), "off": (False, GREY), "+": (True, 0.9), "-": (True, 0.5)}
VISIBILITY = ("nearest", "surface")
MASKS = ("splat", "render")
# legacy (Open3D Visualizer: the default and reference, for exact paper reproduction) | filament | splat
# (render/splat.py: emulates legacy without Open3D, tests/render/test_splat.py)
RENDERERS = (*OPEN3D_RENDERERS, "splat")


@dataclass(frozen=True, kw_only=True)
class RenderOptions:
    """Everything that decides what a sample's row holds; recorded in the store's `render` attribute."""

    views: int = 9
    view_plan: str = "paper"
    angle_shift: float = 0.0        # radians added to every view angle (paper's ablation)
    image_size: int = 336
    supersample: int = 3            # render at image_size * supersample, then area-average down
    max_points: int = 336 * 336
    point_size: float = 6.0         # pixels at the supersampled resolution; datasets.yaml may set it per class
    light: str = "on"               # on | off | + (stronger) | - (weaker)
    downsample: float = 1.0         # keep this fraction of points (farthest-point sampling) before rendering
    visibility: str = "nearest"     # nearest (paper) | surface (within surface_tolerance of the nearest)
    surface_tolerance: float = 0.01  # fraction of the bounding radius, for visibility "surface"
    knn: int = 8
    fov_degrees: float = 30.0
    margin: float = 1.1
    renderer: str = "legacy"        # legacy (Visualizer, EGL) | filament (OffscreenRenderer) | splat (no Open3D)
    # splat (render/masks.py: no second capture; matches the legacy renderer's points, see
    # tests/render/test_masks.py) | render (a second set of captures); None: render for filament, else splat
    masks: str | None = None
    # the dataset's numbers for view_plan "pointad-code" (datasets.yaml `view_plans:`, see render/view_plan.py
    # CodePlan); filled in by render.datasets.dataset_render_options; None = the MVTec 3D-AD script's
    code_plan: dict | None = None

    def __post_init__(self):
        for name in ("angle_shift", "point_size", "downsample", "surface_tolerance", "fov_degrees", "margin"):
            if not np.isfinite(getattr(self, name)):  # NaN passes every comparison below
                raise ConfigError(f"--{name.replace('_', '-')} must be a finite number, got {getattr(self, name)}")
        make_view_plan(self.view_plan, self.views, self.angle_shift, self.code_plan)  # validates plan and count
        if self.light not in LIGHTS:
            raise ConfigError(f"--light must be one of {', '.join(LIGHTS)}, got {self.light!r}")
        if self.renderer not in RENDERERS:
            raise ConfigError(f"--renderer must be one of {', '.join(RENDERERS)}, got {self.renderer!r}")
        if self.masks is None:
            object.__setattr__(self, "masks", "render" if self.renderer == "filament" else "splat")
        if self.masks not in MASKS:
            raise ConfigError(f"--masks must be one of {', '.join(MASKS)}, got {self.masks!r}")
        if self.masks == "splat" and self.renderer == "filament":
            raise ConfigError(f"--masks splat draws points as the legacy renderer does; with --renderer "
                              f"{self.renderer} use --masks render")
        if self.masks == "render" and self.renderer == "splat":
            raise ConfigError("--renderer splat draws without Open3D; its masks are splatted (--masks splat)")
        if self.visibility not in VISIBILITY:
            raise ConfigError(f"--visibility must be one of {', '.join(VISIBILITY)}, got {self.visibility!r}")
        if not 0 < self.downsample <= 1:
            raise ConfigError(f"--downsample must be in (0, 1], got {self.downsample}")
        if self.supersample < 1 or self.image_size < 8 or self.point_size <= 0 or self.knn < 1:
            raise ConfigError("supersample >= 1, image_size >= 8, point_size > 0 and knn >= 1 are required")

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def plan(self):
        return make_view_plan(self.view_plan, self.views, self.angle_shift, self.code_plan)


def estimate_normals(points: np.ndarray, radius: float) -> np.ndarray:
    """(P, 3) unit normals by Open3D's hybrid KNN search (used only for shading the views)."""
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points.astype(np.float64)))
    cloud.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=radius, max_nn=30))
    return np.asarray(cloud.normals)


def _capture_all(rasterizer: LegacyRasterizer, camera: Camera, extrinsics: np.ndarray, style: DrawStyle,
                 supersample: int) -> np.ndarray:
    """(V, S, S, 3) float images of the rasterizer's current cloud, one per view."""
    near, far = camera.distance * 0.05, camera.distance * 10
    intrinsic = camera.intrinsic(supersample)
    return np.stack([downsample(rasterizer.capture(intrinsic, e, style, near, far), supersample)
                     for e in extrinsics])


def render_masks(rasterizer: LegacyRasterizer, labels: np.ndarray, camera: Camera, extrinsics: np.ndarray,
                 point_size: float, supersample: int) -> np.ndarray:
    """(V, S, S) uint8 mask views of the rasterizer's current cloud, drawn by Open3D (SPEC 3.5): unlit,
    anomalous points white on black, area-averaged down, binarised at 0.5. No capture for a good sample."""
    if not labels.any():
        return np.zeros((len(extrinsics), camera.image_size, camera.image_size), np.uint8)
    rasterizer.set_colors(np.repeat((labels[:, None] != 0).astype(np.float64), 3, axis=1))
    rendered = _capture_all(rasterizer, camera, extrinsics, DrawStyle(point_size, (0, 0, 0), False), supersample)
    return (rendered.mean(axis=-1) >= 0.5).astype(np.uint8)


def render_sample(sample: Sample, options: RenderOptions, rasterizer: LegacyRasterizer | None,
                  device="cpu") -> SampleArrays:
    """The store row of one sample: renderings, mask views and all per-point arrays, padded to max_points.

    rasterizer: Open3D's; unused (may be None) with renderer "splat", which draws on torch `device`."""
    points, labels, grid_index = sample.points, sample.point_labels, sample.grid_index
    if options.downsample < 1:
        keep = farthest_point_indices(points, max(1, round(len(points) * options.downsample)))
        points, labels = points[keep], labels[keep]
        grid_index = None if grid_index is None else grid_index[keep]
    if len(points) > options.max_points:
        raise ValueError(f"{len(points)} points exceed the store's max_points {options.max_points}")
    camera = fit_camera(points, options.image_size, options.fov_degrees, options.margin)
    radius = camera.distance * np.sin(np.radians(options.fov_degrees) / 2) / options.margin
    plan = options.plan
    rotations = plan.rotations
    extrinsics = camera.extrinsics(rotations)

    light_on, grey = LIGHTS[options.light]
    normals = estimate_normals(points, plan.normals_radius or 0.05 * radius)
    if options.renderer == "splat":
        levels = draw_views([Cloud(points, normals, grey, camera)], rotations, options.point_size,
                            options.supersample, light_on, device)[0]
        views = np.repeat(levels[..., None] / np.float32(255), 3, axis=-1)
    else:
        rasterizer.set_cloud(points, np.full((len(points), 3), grey), normals)
        views = _capture_all(rasterizer, camera, extrinsics, DrawStyle(options.point_size, (1, 1, 1), light_on),
                             options.supersample)
    if options.masks == "splat":
        masks = splat_masks(points, labels, camera, rotations, options.point_size, options.supersample)
    else:
        masks = render_masks(rasterizer, labels, camera, extrinsics, options.point_size, options.supersample)

    pixel, depth, inside = project(points, camera, rotations)
    valid = np.ones(len(points), bool)
    if options.visibility == "nearest":
        visible = nearest_per_pixel(pixel, depth, valid, options.image_size, inside)
    else:
        visible = surface_visible(pixel, depth, valid, options.image_size,
                                  options.surface_tolerance * radius, inside)
    proxy = proxy_indices(points, valid, visible.any(axis=0))
    knn, knn_weight = knn_graph(points, valid, options.knn)
    return _padded(sample, options, views, masks, pixel, visible, points, labels, grid_index, proxy, knn, knn_weight,
                   camera.intrinsic(), extrinsics)


def _padded(sample, options, views, masks, pixel, visible, points, labels, grid_index, proxy, knn, knn_weight,
            intrinsic, extrinsic):
    """Place the per-point arrays in max_points slots; padding as the store's fill values."""
    n, total, size, v = len(points), options.max_points, options.image_size, options.views

    def slot(shape, fill, dtype, values, axis_points=0):
        out = np.full(shape, fill, dtype)
        out[(slice(None),) * axis_points + (slice(0, n),)] = values
        return out

    grid_hw = np.asarray(sample.grid_hw, np.int32)
    return SampleArrays(
        n_points=np.int32(n),
        grid_hw=grid_hw,
        image=np.clip(np.rint(views * 255), 0, 255).astype(np.uint8),
        mask=masks,
        pixel=slot((v, total, 2), 0, np.int16, pixel, axis_points=1),
        visible=slot((v, total), False, bool, visible, axis_points=1),
        xyz=slot((total, 3), 0, np.float32, points),
        valid=slot((total,), False, bool, True),
        label=slot((total,), 0, np.uint8, labels),
        grid_index=slot((total,), -1, np.int32, -1 if grid_index is None else grid_index),
        proxy=slot((total,), -1, np.int32, proxy),
        knn=slot((total, options.knn), -1, np.int32, knn),
        knn_weight=slot((total, options.knn), 0, np.float16, knn_weight),
        rgb=np.zeros((size, size, 3), np.uint8) if sample.rgb is None else _fit_grid(sample.rgb, size),
        rgb_mask=np.zeros((size, size), np.uint8) if sample.grid_mask is None else _fit_grid(sample.grid_mask, size),
        intrinsic=np.asarray(intrinsic, np.float64),  # the camera of the projection above, at image size
        extrinsic=np.asarray(extrinsic, np.float64),
    )


def _fit_grid(array: np.ndarray, size: int) -> np.ndarray:
    if array.shape[:2] != (size, size):
        raise ValueError(f"organized grid {array.shape[:2]} differs from the store's image size {size}")
    return array
