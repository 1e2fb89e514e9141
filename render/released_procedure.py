"""Re-enactment of the released PointAD code's per-sample render + visibility procedure: the baseline of design §9.

Written from its description (design §5.6 "Where the released code differs" and the render issue: "a window
per view at 1024², per-point Python z-buffer"), not from its source; nothing of that repository is here.
Per sample: normals once (Open3D hybrid search, radius 0.1, max_nn 50), grey 0.7; then for each of the
9 views of the released plan (X tilts -45, -15, 0, 15, 45 degrees, then Y tilts -30, -15, 15, 30):
  - a new hidden `Visualizer` window of 1024 x 1024, a deep copy of the cloud rotated about its centre,
    point size, `capture_screen_float_buffer`, bicubic resize to 336 with PIL, window destroyed;
  - a second new window of 1036 x 1036 for the ground-truth view (light off, black background,
    anomalous points white, point size 6), captured, resized, binarised, destroyed;
  - visibility: the points projected with that view's window camera (a numpy pinhole projection, as
    cv2.projectPoints would), coordinates truncated to 336 x 336 pixels, then a per-point Python loop
    keeping the largest z per pixel in a depth buffer and a second per-point loop marking the winners.
Normals are estimated once per sample, not per view, which can only make the baseline faster.
The speed baseline only: nothing in the pipeline calls it (design §5.6 lists the released visibility rule
as not built); `benchmarks/render_bench.py` times it against our render, and it keeps none of its outputs.
Besides `rasterize`, the one module that draws with Open3D, because the released code's cost is its windows.
"""

from __future__ import annotations

import copy
import time

import numpy as np
import open3d as o3d
from PIL import Image

IMAGE_WINDOW = 1024
MASK_WINDOW = 1036
OUT_SIZE = 336
GREY = 0.7
VIEWS = (("x", -45.0), ("x", -15.0), ("x", 0.0), ("x", 15.0), ("x", 45.0),
         ("y", -30.0), ("y", -15.0), ("y", 15.0), ("y", 30.0))


def _rotation(axis: str, degrees: float) -> np.ndarray:
    angles = {"x": (np.radians(degrees), 0, 0), "y": (0, np.radians(degrees), 0)}[axis]
    return o3d.geometry.get_rotation_matrix_from_xyz(angles)


def _capture(cloud: o3d.geometry.PointCloud, window: int, point_size: float, light_on: bool,
             background: tuple[float, float, float]):
    """A new hidden window with only `cloud`: ((window, window, 3) float image, its pinhole parameters)."""
    vis = o3d.visualization.Visualizer()
    if not vis.create_window(width=window, height=window, visible=False):
        raise RuntimeError("Open3D could not create a hidden window (EGL offscreen)")
    vis.add_geometry(cloud)
    option = vis.get_render_option()
    option.point_size = point_size
    option.light_on = light_on
    option.background_color = np.asarray(background, np.float64)
    image = np.asarray(vis.capture_screen_float_buffer(do_render=True))
    parameters = vis.get_view_control().convert_to_pinhole_camera_parameters()
    vis.destroy_window()
    return image, parameters


def _resize(image: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8)).resize(
        (OUT_SIZE, OUT_SIZE), Image.BICUBIC))


def _project(points: np.ndarray, parameters, window: int) -> np.ndarray:
    """(P, 2) float pixel (u, v) at OUT_SIZE of world points through the window's camera (pinhole, no distortion)."""
    extrinsic = np.asarray(parameters.extrinsic)
    scale = np.array([[OUT_SIZE / window], [OUT_SIZE / window], [1.0]])  # rows u and v scale, the last stays
    intrinsic = np.asarray(parameters.intrinsic.intrinsic_matrix) * scale
    cam = points @ extrinsic[:3, :3].T + extrinsic[:3, 3]
    uvw = cam @ intrinsic.T
    return uvw[:, :2] / uvw[:, 2:3]


def _zbuffer_loop(uv: np.ndarray, z: np.ndarray) -> np.ndarray:
    """(P,) bool: the point with the largest z in its truncated pixel, by two per-point Python loops."""
    depth = np.full((OUT_SIZE, OUT_SIZE), -np.inf)
    for i in range(len(z)):
        u, v = int(uv[i, 0]), int(uv[i, 1])
        if 0 <= u < OUT_SIZE and 0 <= v < OUT_SIZE and z[i] > depth[v, u]:
            depth[v, u] = z[i]
    visible = np.zeros(len(z), dtype=bool)
    for i in range(len(z)):
        u, v = int(uv[i, 0]), int(uv[i, 1])
        if 0 <= u < OUT_SIZE and 0 <= v < OUT_SIZE and z[i] == depth[v, u]:
            visible[i] = True
    return visible


def run_sample(points: np.ndarray, labels: np.ndarray, point_size: float = 6.0) -> dict:
    """Run the released procedure on one cloud; return seconds {"render": ..., "visibility": ..., "total": ...}.

    points: (P, 3) float; labels: (P,) 0/1 (1 = anomalous, drawn white in the ground-truth view).
    "render" counts normals, copies, both windows per view and the resizes; "visibility" the
    projection and the two z-buffer loops. Also returns "visible_pairs", the visible (view, point) count.
    """
    render_s = visibility_s = 0.0
    visible_pairs = 0
    start = time.perf_counter()
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.asarray(points, np.float64)))
    cloud.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=0.1, max_nn=50))
    cloud.paint_uniform_color([GREY, GREY, GREY])
    truth = copy.deepcopy(cloud)
    truth.colors = o3d.utility.Vector3dVector(np.repeat(np.asarray(labels, np.float64)[:, None], 3, axis=1))
    render_s += time.perf_counter() - start
    for axis, degrees in VIEWS:
        start = time.perf_counter()
        rotation = _rotation(axis, degrees)
        view = copy.deepcopy(cloud)
        view.rotate(rotation, center=cloud.get_center())
        image, parameters = _capture(view, IMAGE_WINDOW, point_size, True, (1.0, 1.0, 1.0))
        _resize(image)
        mask_view = copy.deepcopy(truth)
        mask_view.rotate(rotation, center=truth.get_center())
        mask, _ = _capture(mask_view, MASK_WINDOW, 6.0, False, (0.0, 0.0, 0.0))
        _ = _resize(mask).mean(axis=-1) >= 128
        render_s += time.perf_counter() - start

        start = time.perf_counter()
        rotated = np.asarray(view.points)
        uv = _project(rotated, parameters, IMAGE_WINDOW)
        visible_pairs += int(_zbuffer_loop(uv, rotated[:, 2]).sum())
        visibility_s += time.perf_counter() - start
    return {"render": render_s, "visibility": visibility_s, "total": render_s + visibility_s,
            "visible_pairs": visible_pairs}
