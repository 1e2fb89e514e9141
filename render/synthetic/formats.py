"""Turn a synthetic `Scene` into the files of each real on-disk format.

Each `*_arrays` function is pure (scene -> arrays, plus the truth the tests compare against);
each `write_*` function writes those arrays where the format's reader looks for them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
import yaml
from PIL import Image
from scipy import ndimage

from .scene import Scene

FIELD_OF_VIEW = 0.10       # metres across the grid
MVTEC_DISTANCE = 0.30      # sensor to plane centre
EYECANDIES_FOCAL = 711.11  # the raw release's camera
DROPOUT = 0.005            # fraction of pixels the scanner missed
NOISE = 5e-5               # depth noise, metres

# Raw Eyecandies scenes, in Blender units (a candy about one unit across): a belt along world Y in the plane
# Z = 0, walls beyond |X| = BELT_WALL, a camera tilted by about CAMERA_TILT about X looking at the origin.
BLENDER_UNITS = 11.0       # Blender units per scene metre: the synthetic objects become 0.6-0.9 units across
SCENE_HALF = 1.4           # the scene grid spans +-SCENE_HALF units around the candy
BELT_WALL = 1.1            # belt walls start here across the belt (units), outside the released box (1.0)
WALL_HEIGHT = 0.5
VIEW_HALF_WIDTH = 1.2      # half the belt width the image spans at the candy (units)
CAMERA_TILT = 0.3          # radians from straight down; each sample adds up to +-0.03
MARCH_STEPS, BISECTIONS = 24, 10
REAL3D_UNITS = 1000.0      # Real3D-AD clouds are in millimetres


def mvtec_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of each pixel centre of a size x size scanner grid, metres, centred."""
    coords = (np.arange(size) - size / 2 + 0.5) * (FIELD_OF_VIEW / size)
    return np.meshgrid(coords, coords)


def eyecandies_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) metres of the belt-plane grid the candy is modelled on: +-SCENE_HALF units, finer than the image."""
    cells = int(size * 1.5)
    coords = (np.arange(cells) - cells / 2 + 0.5) * (2 * SCENE_HALF / BLENDER_UNITS / cells)
    return np.meshgrid(coords, coords)


def _plane_depth(x, y, distance, rng) -> np.ndarray:
    """Depth of a slightly tilted support plane (the background RANSAC has to find)."""
    slope = rng.uniform(-0.08, 0.08, size=2)
    return distance + slope[0] * x + slope[1] * y


def mvtec_arrays(scene: Scene, x, y, rng) -> dict:
    """xyz (H, W, 3) float32 with missing = 0, rgb, gt (0/255), and `object` (measured object pixels)."""
    z = _plane_depth(x, y, MVTEC_DISTANCE, rng) - scene.height + NOISE * rng.standard_normal(x.shape)
    xyz = np.stack([x, y, z], axis=-1).astype(np.float32)
    measured = rng.random(x.shape) >= DROPOUT
    xyz[~measured] = 0
    return {"xyz": xyz, "rgb": scene.texture, "gt": (scene.defect_mask * 255).astype(np.uint8),
            "object": scene.footprint & measured, "defect": scene.defect_mask & measured}


def eyecandies_camera(size: int, tilt: float) -> np.ndarray:
    """4 x 4 camera-to-world pose (the release's pose.txt convention: world = R cam + t) of a camera tilted
    by `tilt` about X, looking at the world origin; its distance makes the image VIEW_HALF_WIDTH units wide."""
    distance = VIEW_HALF_WIDTH * EYECANDIES_FOCAL / (size / 2)
    c, s = np.cos(tilt), np.sin(tilt)
    pose = np.eye(4)
    pose[:3, :3] = np.array([[1, 0, 0], [0, -c, s], [0, -s, -c]])  # columns: camera x, y (image rows), z (forward)
    pose[:3, 3] = [0, -distance * s, distance * c]
    return pose


def _ray_hits(pose: np.ndarray, size: int, surface, candy_top: float) -> tuple[np.ndarray, np.ndarray]:
    """(depth (S, S) camera z, hit (S, S, 3) world points) of each pixel's ray on the height field `surface`.

    March from above the highest point the ray can meet (the candy's top, or the walls' for rays that reach
    the belt beyond BELT_WALL) to the belt plane, then bisect the first step that went below."""
    v, u = np.mgrid[0:size, 0:size].astype(np.float64)
    rays = np.stack([(u - size / 2) / EYECANDIES_FOCAL, (v - size / 2) / EYECANDIES_FOCAL, np.ones_like(u)], -1)
    direction = rays @ pose[:3, :3].T
    origin = pose[:3, 3]
    far = -origin[2] / direction[..., 2]
    # rays only approach the optical axis on the way up: one that meets the belt inside the walls meets no wall
    ceiling = np.where(np.abs(origin[0] + far * direction[..., 0]) < BELT_WALL, candy_top, WALL_HEIGHT) + 1e-3
    near = (ceiling - origin[2]) / direction[..., 2]

    def below(z):
        point = origin + z[..., None] * direction
        return point[..., 2] <= surface(point[..., 0], point[..., 1])

    low, high = near.copy(), far.copy()
    found = np.zeros(near.shape, bool)
    for t in np.linspace(0, 1, MARCH_STEPS + 1)[1:]:
        z = near + t * (far - near)
        first = below(z) & ~found
        high[first] = z[first]
        low[first] = (near + (t - 1 / MARCH_STEPS) * (far - near))[first]
        found |= first
    for _ in range(BISECTIONS):
        middle = (low + high) / 2
        under = below(middle)
        high = np.where(under, middle, high)
        low = np.where(under, low, middle)
    return high, origin + high[..., None] * direction


def eyecandies_arrays(scene: Scene, x, y, rng) -> dict:
    """A raw Eyecandies sample: the candy on a walled belt seen by a posed camera, in Blender units.

    16-bit normalised depth (camera z) with its min/max, the camera pose, six lightings of the texture,
    the defect mask (0/255); truth: `object` (pixels surely on the candy), `background` (belt and walls),
    `defect`. Pixels on the candy's near side, low on its edge, are neither object nor background."""
    size = int(round(x.shape[1] / 1.5))
    cell = (x[0, 1] - x[0, 0]) * BLENDER_UNITS
    first = x[0, 0] * BLENDER_UNITS
    height = scene.height * BLENDER_UNITS

    def cell_of(wx, wy):
        j, i = np.rint((wx - first) / cell).astype(int), np.rint((wy - first) / cell).astype(int)
        inside = (i >= 0) & (i < x.shape[0]) & (j >= 0) & (j < x.shape[1])
        return np.clip(i, 0, x.shape[0] - 1), np.clip(j, 0, x.shape[1] - 1), inside

    def surface(wx, wy):
        i, j, inside = cell_of(wx, wy)
        wall = WALL_HEIGHT * np.clip((np.abs(wx) - BELT_WALL) / 0.1, 0, 1)
        return np.maximum(np.where(inside, height[i, j], 0.0), wall)

    pose = eyecandies_camera(size, CAMERA_TILT + rng.uniform(-0.03, 0.03))
    depth, hit = _ray_hits(pose, size, surface, float(height.max()))
    depth = depth + NOISE * BLENDER_UNITS * rng.standard_normal(depth.shape)
    i, j, inside = cell_of(hit[..., 0], hit[..., 1])
    footprint = inside & scene.footprint[i, j]
    lo, hi = float(depth.min()), float(depth.max())
    depth16 = np.round((depth - lo) / (hi - lo) * 65535).astype(np.uint16)
    texture = np.where(inside[..., None], scene.texture[i, j], 150).astype(np.float64)
    lights = (1.0, 0.55, 0.6, 0.7, 0.5, 0.8)  # image_0 all spotlights (the brightest), 1-4 one spot, 5 light box
    images = [np.clip(texture * f, 0, 255).astype(np.uint8) for f in lights]
    defect = inside & scene.defect_mask[i, j]
    return {"depth16": depth16, "depth_min": lo, "depth_max": hi, "images": images, "pose": pose,
            "mask": (defect * 255).astype(np.uint8), "hit": hit,
            "object": footprint & (hit[..., 2] >= 0.5 * height[scene.footprint].min()),
            "background": ~footprint, "defect": defect}


def real3d_arrays(scene: Scene, x, y, rng) -> dict:
    """A closed shell (top surface, side wall, bottom) as (P, 3) points in millimetres with (P,) labels, shuffled
    (tens of thousands of points at the default grid)."""
    top = scene.footprint
    rim = top & ~ndimage.binary_erosion(top)
    wall_levels = np.linspace(0.0, 1.0, 8)[1:-1]
    parts = [np.stack([x[top], y[top], scene.height[top]], axis=1),
             np.concatenate([np.stack([x[rim], y[rim], scene.height[rim] * t], axis=1) for t in wall_levels]),
             np.stack([x[top], y[top], np.zeros(int(top.sum()))], axis=1)]
    labels = [scene.defect_mask[top], np.zeros(len(parts[1]), bool), np.zeros(len(parts[2]), bool)]
    points = np.concatenate(parts) + NOISE * rng.standard_normal((sum(map(len, parts)), 3))
    points *= REAL3D_UNITS
    order = rng.permutation(len(points))
    return {"points": points[order], "labels": np.concatenate(labels)[order].astype(np.uint8)}


def _save_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, compress_level=1)  # noisy synthetic textures: fast beats small


def write_mvtec(root: Path, class_name: str, split: str, defect: str, index: int, arrays: dict) -> None:
    """<class>/<split>/<defect>/{xyz,rgb,gt}/NNN.{tiff,png}; gt only in the test split."""
    folder = root / class_name / split / defect
    (folder / "xyz").mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(folder / "xyz" / f"{index:03d}.tiff", arrays["xyz"], photometric="rgb")
    _save_png(folder / "rgb" / f"{index:03d}.png", arrays["rgb"])
    if split == "test":
        _save_png(folder / "gt" / f"{index:03d}.png", arrays["gt"])


EYECANDIES_SPLIT_DIRS = {"train": "train", "validation": "val", "test": "test_public"}


def write_eyecandies(root: Path, class_name: str, split: str, defect: str, index: int, arrays: dict) -> None:
    """<Cat>/<split>/data/NNN_{image_0..5.png, depth.png, info_depth.yaml, pose.txt, mask.png}."""
    folder = root / class_name / EYECANDIES_SPLIT_DIRS[split] / "data"
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{index:03d}"
    for k, image in enumerate(arrays["images"]):
        _save_png(folder / f"{stem}_image_{k}.png", image)
    Image.fromarray(arrays["depth16"]).save(folder / f"{stem}_depth.png", compress_level=1)
    info = {"normalization": {"min": arrays["depth_min"], "max": arrays["depth_max"]}}
    (folder / f"{stem}_info_depth.yaml").write_text(yaml.safe_dump(info))
    np.savetxt(folder / f"{stem}_pose.txt", arrays["pose"])
    _save_png(folder / f"{stem}_mask.png", arrays["mask"])


def write_real3d(root: Path, class_name: str, split: str, defect: str, index: int, arrays: dict) -> None:
    """<class>/train/N_template.pcd, <class>/test/N_<defect|good>.pcd, <class>/gt/N_<defect>.txt."""
    name = f"{index}_template" if split == "train" else f"{index}_{defect}"
    folder = root / class_name / split
    folder.mkdir(parents=True, exist_ok=True)
    import open3d as o3d  # here, not at import: `render --help` reads the synthetic defaults without Open3D
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(arrays["points"]))
    if not o3d.io.write_point_cloud(str(folder / f"{name}.pcd"), cloud, write_ascii=False):
        raise OSError(f"{folder / name}.pcd: Open3D could not write the point cloud")
    if defect != "good":
        (root / class_name / "gt").mkdir(exist_ok=True)
        table = np.column_stack([arrays["points"], arrays["labels"]])
        np.savetxt(root / class_name / "gt" / f"{name}.txt", table, fmt=["%.9g"] * 3 + ["%d"])
