"""Render one preprocessed sample into its store row (design §3, steps 2-7): views, masks (splatted by
`render/masks.py`, or rendered), projections, visibility, proxy and smoothing graph. Reads no files
and writes none: `render/build.py` does that.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
import open3d as o3d

from ..shared.sample import Sample
from ..shared.store import SampleArrays
from ..shared.threads import available, submit
from .camera import Camera, fit_camera, project, view_coordinates
from .graph import knn_graph, proxy_indices
from .masks import splat_masks
from .normals import MAX_NN, graph_normals, grid_normals_of_points, grid_pca_normals_within
from .options import LIGHTS, RenderOptions, drawn_normals
from .preprocess import farthest_point_indices
from .rasterize import DrawStyle, LegacyRasterizer, downsample
from .splat import Cloud, draw_views
from .visibility import nearest_per_pixel, surface_visible


def estimate_normals(points: np.ndarray, radius: float) -> np.ndarray:
    """(P, 3) unit normals by Open3D's hybrid KNN search (used only for shading the views)."""
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points.astype(np.float64)))
    cloud.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=radius, max_nn=MAX_NN))
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
    """(V, S, S) uint8 mask views of the rasterizer's current cloud, drawn by Open3D (design §3.5): unlit,
    anomalous points white on black, area-averaged down, binarised at 0.5. No capture for a good sample."""
    if not labels.any():
        return np.zeros((len(extrinsics), camera.image_size, camera.image_size), np.uint8)
    rasterizer.set_colors(np.repeat((labels[:, None] != 0).astype(np.float64), 3, axis=1))
    rendered = _capture_all(rasterizer, camera, extrinsics, DrawStyle(point_size, (0, 0, 0), False), supersample)
    return (rendered.mean(axis=-1) >= 0.5).astype(np.uint8)


def render_sample(sample: Sample, options: RenderOptions, rasterizer: LegacyRasterizer | None,
                  device="cpu", threads: int | None = None) -> SampleArrays:
    """The store row of one sample: renderings, mask views and all per-point arrays, padded to max_points.

    rasterizer: Open3D's; unused (may be None) with renderer "splat", which draws on torch `device`.
    threads: this call's threads (None: one per CPU): the KD-tree queries, and with more than one, the k-NN
    graph built beside the drawing; the process-wide pools (torch, Open3D, BLAS, Mesa) are the caller's to
    limit (`render.build.render_row`). The row does not depend on it. Normals: `options.drawn_normals` (auto: grid
    where the sample has a grid)."""
    budget = threads or available()
    options = replace(options, normals=drawn_normals(options.normals, sample.grid_index is not None))
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
    coordinates = view_coordinates(points, camera, rotations)  # once: the splat draw, its masks and the projection

    valid = np.ones(len(points), bool)
    if options.normals == "graph":  # the graph first: the normals are made from it
        knn, knn_weight = knn_graph(points, valid, options.knn, workers=budget)
        normals = graph_normals(points, knn)
        views, masks = _draw(points, labels, normals, camera, rotations, coordinates, extrinsics, options, rasterizer,
                             device)
    else:
        normals = _normals(points, grid_index, sample, options, plan.normals_radius or 0.05 * radius)
        views, masks, knn, knn_weight = _draw_beside_graph(points, labels, normals, camera, rotations, coordinates,
                                                           extrinsics, options, rasterizer, device, budget)
    pixel, depth, inside = project(points, camera, rotations, coordinates)
    if options.visibility == "nearest":
        visible = nearest_per_pixel(pixel, depth, valid, options.image_size, inside)
    else:
        visible = surface_visible(pixel, depth, valid, options.image_size,
                                  options.surface_tolerance * radius, inside)
    proxy = proxy_indices(points, valid, visible.any(axis=0), knn, workers=budget)
    return _padded(sample, options, views, masks, pixel, visible, points, labels, grid_index, proxy, knn, knn_weight,
                   camera.intrinsic(), extrinsics)


def _normals(points, grid_index, sample, options: RenderOptions, radius: float) -> np.ndarray:
    """(P, 3) normals by the options' estimator, open3d or grid (design §3.2); the grid's disc is the cells
    Open3D's search of `radius` covers."""
    if options.normals == "open3d":
        return estimate_normals(points, radius)  # holds the GIL: nothing beside it
    if grid_index is None:
        raise ValueError(f"normals 'grid' need an organized cloud; {sample.sample_id} has no grid")
    return grid_normals_of_points(points, grid_index, sample.grid_hw,
                                  lambda xyz, valid: grid_pca_normals_within(xyz, valid, radius))


def _draw_beside_graph(points, labels, normals, camera, rotations, coordinates, extrinsics, options, rasterizer, device,
                       budget):
    """`_draw`'s views and masks, and the k-NN graph, built beside the drawing with a thread to spare."""
    valid = np.ones(len(points), bool)
    with ThreadPoolExecutor(1) as beside:
        # the graph needs neither normals nor views: with a thread to spare its query (the GIL released) runs
        # while the views are drawn
        graph = submit(beside if budget > 1 else None, knn_graph, points, valid, options.knn, workers=budget)
        views, masks = _draw(points, labels, normals, camera, rotations, coordinates, extrinsics, options, rasterizer,
                             device)
        knn, knn_weight = graph.result()
    return views, masks, knn, knn_weight


def _draw(points, labels, normals, camera, rotations, coordinates, extrinsics, options: RenderOptions, rasterizer,
          device) -> tuple[np.ndarray, np.ndarray]:
    """(V, S, S, 3) uint8 views and (V, S, S) uint8 masks of one cloud, by the options' renderers (coordinates: the
    points' `view_coordinates`)."""
    light_on, grey = LIGHTS[options.light]
    if options.renderer == "splat":
        levels = draw_views([Cloud(points, normals, grey, camera, coordinates)], rotations, options.point_size,
                            options.supersample, light_on, device)[0]
        views = np.stack([levels, levels, levels], axis=-1)  # grey: the same level in R, G and B
    else:
        rasterizer.set_cloud(points, np.full((len(points), 3), grey), normals)
        views = _capture_all(rasterizer, camera, extrinsics, DrawStyle(options.point_size, (1, 1, 1), light_on),
                             options.supersample)
        views = np.clip(np.rint(views * 255), 0, 255).astype(np.uint8)
    if options.masks == "splat":
        masks = splat_masks(points, labels, camera, rotations, options.point_size, options.supersample, coordinates)
    else:
        masks = render_masks(rasterizer, labels, camera, extrinsics, options.point_size, options.supersample)
    return views, masks


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
        image=views,
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
