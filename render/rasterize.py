"""The only Open3D rendering code: draw a coloured point cloud through an explicit pinhole camera.

Two renderers with one interface (set_cloud, set_colors, capture, close): `legacy` (default) and
`filament` (Open3D's OffscreenRenderer, for machines with a GPU driver).

`LegacyRasterizer` uses `open3d.visualization.Visualizer` (the renderer the paper used). With no
DISPLAY it falls back to EGL offscreen rendering on Mesa by itself; where EGL is missing we start
a private Xvfb display (see `shared_display`). One window is created per worker and reused for
every view of every sample: only the points, colours and camera change between captures.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import open3d as o3d
from PIL import Image

from ..shared.errors import PointADError, first_line

o3d.utility.set_verbosity_level(o3d.utility.VerbosityLevel.Error)

RENDERERS = ("legacy", "filament")


class RenderBackendError(PointADError):
    """The renderer could not start (no EGL, no Xvfb, no GPU driver for Filament)."""


@dataclass(frozen=True)
class DrawStyle:
    """How a capture looks: lit grey points on white for views, unlit black/white for masks."""

    point_size: float
    background: tuple[float, float, float]
    light_on: bool


def _start_xvfb() -> subprocess.Popen:
    """A private virtual X display for this process (fallback where EGL is missing)."""
    if shutil.which("Xvfb") is None:
        raise RenderBackendError("Open3D could not create an offscreen (EGL) window and Xvfb is not installed "
                                 "(apt-get install xvfb, or run the README's set-up)")
    for number in range(90 + os.getpid() % 100, 400):
        if not os.path.exists(f"/tmp/.X11-unix/X{number}") and not os.path.exists(f"/tmp/.X{number}-lock"):
            process = subprocess.Popen(["Xvfb", f":{number}", "-screen", "0", "1280x1024x24", "-nolisten", "tcp"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
            if process.poll() is None:
                os.environ["DISPLAY"] = f":{number}"
                atexit.register(process.terminate)
                return process
    raise RenderBackendError("could not start Xvfb on any display :90-:399")


def _quiet_runtime_dir() -> None:
    """Mesa's EGL complains on stderr when XDG_RUNTIME_DIR is unset (as under CI); give it a private one, removed
    at exit (processes started from this one inherit it and make none)."""
    if not os.environ.get("XDG_RUNTIME_DIR"):
        made = tempfile.mkdtemp(prefix="pointad-runtime-")
        os.environ["XDG_RUNTIME_DIR"] = made
        atexit.register(_remove_if_empty, made)


def _remove_if_empty(folder: str) -> None:
    """rmdir of the runtime folder this process made: it removes nothing else, and leaves a folder something
    was left in."""
    with contextlib.suppress(OSError):
        os.rmdir(folder)


class LegacyRasterizer:
    """Reusable offscreen window of `size` x `size` pixels (the supersampled resolution)."""

    def __init__(self, size: int):
        self.size = size
        _quiet_runtime_dir()
        self.visualizer = o3d.visualization.Visualizer()
        if not self.visualizer.create_window(width=size, height=size, visible=False):
            _start_xvfb()
            self.visualizer = o3d.visualization.Visualizer()
            if not self.visualizer.create_window(width=size, height=size, visible=False):
                raise RenderBackendError("Open3D could not create a window, neither EGL offscreen nor under Xvfb")
        self.cloud = o3d.geometry.PointCloud()

    def set_cloud(self, points: np.ndarray, colors: np.ndarray, normals: np.ndarray | None = None) -> None:
        """Replace the drawn points (P, 3), colours (P, 3) in [0, 1] and optional normals (P, 3)."""
        self.cloud.points = o3d.utility.Vector3dVector(np.asarray(points, np.float64))
        self.cloud.colors = o3d.utility.Vector3dVector(np.asarray(colors, np.float64))
        self.cloud.normals = o3d.utility.Vector3dVector(np.zeros((0, 3)) if normals is None
                                                        else np.asarray(normals, np.float64))
        self.visualizer.clear_geometries()
        self.visualizer.add_geometry(self.cloud, reset_bounding_box=True)

    def set_colors(self, colors: np.ndarray) -> None:
        """Change only the colours of the current cloud (mask views reuse the geometry)."""
        self.cloud.colors = o3d.utility.Vector3dVector(np.asarray(colors, np.float64))
        self.visualizer.update_geometry(self.cloud)

    def capture(self, intrinsic: np.ndarray, extrinsic: np.ndarray, style: DrawStyle,
                near: float, far: float) -> np.ndarray:
        """(size, size, 3) float32 image in [0, 1] of the current cloud through the given camera."""
        option = self.visualizer.get_render_option()
        option.point_size = style.point_size
        option.background_color = np.asarray(style.background, np.float64)
        option.light_on = style.light_on
        # Open3D places its lights from a view bounding box that setting a camera enlarges; reset it
        # before every capture, or a view's shading would depend on the views drawn before it.
        self.visualizer.reset_view_point(True)
        control = self.visualizer.get_view_control()
        parameters = o3d.camera.PinholeCameraParameters()
        parameters.intrinsic = o3d.camera.PinholeCameraIntrinsic(self.size, self.size, intrinsic)
        parameters.extrinsic = extrinsic
        # Clipping planes fixed from the camera, not from Open3D's bounding box of the first cloud.
        control.set_constant_z_near(near)
        control.set_constant_z_far(far)
        if not control.convert_from_pinhole_camera_parameters(parameters, allow_arbitrary=True):
            raise RenderBackendError("Open3D refused the camera parameters")
        image = self.visualizer.capture_screen_float_buffer(do_render=True)
        return np.asarray(image, dtype=np.float32)

    def close(self) -> None:
        self.visualizer.destroy_window()


def downsample(image: np.ndarray, factor: int) -> np.ndarray:
    """Area-average an (H, W, C) float image by an integer factor (PIL's exact box reduction)."""
    if factor == 1:
        return image
    channels = [np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c])).reduce(factor))
                for c in range(image.shape[-1])]
    return np.stack(channels, axis=-1)


class FilamentRasterizer:
    """Open3D's Filament `OffscreenRenderer` (headless; Vulkan/EGL). Same interface as LegacyRasterizer.

    Meant for machines with a GPU driver: on CPU (Mesa llvmpipe) it is several times slower.
    """

    def __init__(self, size: int):
        from open3d.visualization import rendering
        self.size = size
        _quiet_runtime_dir()
        try:
            self.renderer = rendering.OffscreenRenderer(size, size)
        except Exception as exc:  # Open3D raises RuntimeError with a multi-line message
            raise RenderBackendError(f"Filament renderer unavailable ({first_line(exc)}); "
                                     "install libvulkan1 and mesa-vulkan-drivers or use --renderer legacy") from exc
        # no tone mapping or colour grading: backgrounds and masks must keep their exact values
        self.renderer.scene.view.set_post_processing(False)
        self.cloud = o3d.geometry.PointCloud()
        self._material = rendering.MaterialRecord()

    def set_cloud(self, points: np.ndarray, colors: np.ndarray, normals: np.ndarray | None = None) -> None:
        self.points = np.asarray(points, np.float64)
        self.normals = None if normals is None else np.asarray(normals, np.float64)
        self.cloud.points = o3d.utility.Vector3dVector(self.points)
        self.cloud.colors = o3d.utility.Vector3dVector(np.asarray(colors, np.float64))

    def set_colors(self, colors: np.ndarray) -> None:
        self.cloud.colors = o3d.utility.Vector3dVector(np.asarray(colors, np.float64))

    def capture(self, intrinsic: np.ndarray, extrinsic: np.ndarray, style: DrawStyle,
                near: float, far: float) -> np.ndarray:
        if self.normals is not None:
            # Filament lights one side of a point only; estimated normals have arbitrary sign, so
            # turn each toward this view's camera (the legacy renderer shades both sides alike).
            eye = -extrinsic[:3, :3].T @ extrinsic[:3, 3]
            facing = np.einsum("pi,pi->p", self.normals, eye - self.points) >= 0
            self.cloud.normals = o3d.utility.Vector3dVector(np.where(facing[:, None], self.normals, -self.normals))
        scene = self.renderer.scene
        scene.clear_geometry()
        self._material.shader = "defaultLit" if style.light_on and self.cloud.has_normals() else "defaultUnlit"
        self._material.point_size = float(style.point_size)
        scene.set_background([*style.background, 1.0])
        scene.add_geometry("cloud", self.cloud, self._material)
        self.renderer.setup_camera(intrinsic, extrinsic, self.size, self.size)
        # a head light: the sun shines along the camera's viewing direction
        scene.scene.set_sun_light(extrinsic[2, :3], [1.0, 1.0, 1.0], 60000)
        scene.scene.enable_sun_light(style.light_on)
        return np.asarray(self.renderer.render_to_image(), dtype=np.float32) / 255.0

    def close(self) -> None:
        self.renderer = None


RASTERIZERS = {"legacy": LegacyRasterizer, "filament": FilamentRasterizer}
_CURRENT: LegacyRasterizer | FilamentRasterizer | None = None
_USED: set[str] = set()


def worker_rasterizer(size: int, renderer: str = "legacy", threads: int | None = None):
    """This process's rasterizer of the given size and kind, reused across samples.

    Only one Open3D window lives per process: with two, the second draws into the first's GL state.
    threads: how many threads Mesa's software rasterizer (llvmpipe) may use in this process; None
    leaves Mesa's default (all CPUs). Takes effect only if no window was opened in this process yet:
    build workers pass 1 before their first sample, so N workers keep N CPUs busy, not N x CPUs.
    """
    global _CURRENT
    if threads is not None and _CURRENT is None:
        # Set for Mesa, never read by us (only shared/environment.py reads the environment): llvmpipe reads
        # LP_NUM_THREADS once, when the process's first GL context is created. It never changes pixels.
        os.environ["LP_NUM_THREADS"] = str(int(threads))
    if renderer == "legacy" and "filament" in _USED:
        # Filament initialises GLFW headless for the whole process; the legacy window cannot follow.
        raise RenderBackendError("this process already used the filament renderer; run legacy renders "
                                 "in another process")
    _USED.add(renderer)
    if _CURRENT is None or _CURRENT.size != size or not isinstance(_CURRENT, RASTERIZERS[renderer]):
        if _CURRENT is not None:
            _CURRENT.close()
        _CURRENT = RASTERIZERS[renderer](size)
    return _CURRENT
