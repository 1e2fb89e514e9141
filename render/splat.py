"""Lit views drawn without Open3D: a z-buffered splat of Phong-shaded points (`--renderer splat`).

Emulates what Open3D's legacy Visualizer draws for a grey point cloud with normals (its PhongShader
for point clouds, on Mesa llvmpipe, as `render/rasterize.py` captures it), so that the views match
the default renderer's (tests/render/test_splat.py measures how closely):

- footprint: a point of size N fills the pixels of `render.masks.footprints` (measured on Open3D);
- depth test: the nearest point per pixel wins (GL_LESS), ties to the point drawn first (lower index),
  compared as Mesa stores depth: 24-bit window depth between the near and far planes that
  `render/sample_render.py` sets (NEAR and FAR times the camera distance);
- shading, once per point (every fragment of a GL point shares its vertex outputs), in the camera's
  frame: colour = ambient * c + sum over 4 lights of (c * diffuse * cos_theta + specular * cos_alpha ** shininess),
  the normal turned toward the eye, l the unit vector to the light, e to the eye,
  cos_theta = clamp(n . l, 0, 1), cos_alpha = clamp(e . reflect(-l, n), 0, 1). Open3D's default lights
  (RenderOption): white; two at the view box's centre + 2 * max extent * front (front points from the
  box toward the camera), two at centre - 2 * max extent * front; diffuse 0.66, specular 0.2, shininess
  100, ambient 0. The view box is the cloud's axis-aligned box (reset before every capture), whose
  centre is the camera's centre. With the light off: colour = c;
- the colour is stored in 8 bits (the render target), then area-averaged to the output size.

The pixel work is torch, so the same code runs on CPU and CUDA, on several samples' views at once
(`draw_views` takes a list of clouds). Output levels are exact integer sums, so a render is
deterministic on a given device: `render verify` re-renders rows and compares bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .camera import Camera, view_coordinates
from .masks import _shapes, footprints, supersampled_positions

DIFFUSE, SPECULAR, SHININESS, AMBIENT = 0.66, 0.2, 100.0, 0.0
# (right, up, front) of each light relative to the view box's centre, in units of its max extent
LIGHTS_RELATIVE = ((0.0, 0.0, 2.0), (0.0, 0.0, 2.0), (0.0, 0.0, -2.0), (0.0, 0.0, -2.0))
NEAR, FAR = 0.05, 10.0  # clipping planes, in camera distances
_EMPTY = torch.iinfo(torch.int64).max  # its lowest byte is 255, white


@dataclass(frozen=True)
class Cloud:
    """One sample to draw: points (P, 3), unit normals (P, 3), grey level c in [0, 1], its camera, and the
    points' `view_coordinates` under the draw's rotations if already computed."""

    points: np.ndarray
    normals: np.ndarray
    grey: float
    camera: Camera
    coordinates: tuple | None = None


def shade(points, normals, grey, camera: Camera, rotations, light_on: bool = True, device="cpu",
          extent: float | None = None, coordinates=None) -> torch.Tensor:
    """Return (V, P) int32 8-bit colour levels of every point in every view (module docstring's model).

    points, normals: (P, 3); grey: c, a number or (P,) per point; extent: the points' box's max extent
    (computed if None); coordinates: the points' `view_coordinates` under `rotations` (computed if None).
    Float32, component by component.
    """
    views, count = len(rotations), len(points)
    grey = torch.as_tensor(np.asarray(grey, np.float32), device=device)
    if not light_on:
        return torch.round(grey.clamp(0, 1) * 255).to(torch.int32).expand(views, count).contiguous()
    if coordinates is None:
        coordinates = view_coordinates(points, camera, rotations)
    x, y, z = (torch.as_tensor(a, device=device) for a in coordinates)
    turn = torch.as_tensor((np.diag([1.0, -1.0, -1.0]) @ np.asarray(rotations, np.float64)).astype(np.float32),
                           device=device)[:, :, :, None]  # (V, 3, 3, 1)
    n = torch.as_tensor(np.ascontiguousarray(np.asarray(normals, np.float32).T), device=device)  # (3, P)
    nx, ny, nz = (turn[:, i, 0] * n[0] + turn[:, i, 1] * n[1] + turn[:, i, 2] * n[2] for i in range(3))
    # turn the normal toward the eye (at the origin), then make it and the eye direction unit vectors
    sign = torch.where(x * nx + y * ny + z * nz > 0, -1.0, 1.0) / torch.sqrt(nx * nx + ny * ny + nz * nz)
    nx, ny, nz = nx * sign, ny * sign, nz * sign
    to_eye = -1 / torch.sqrt(x * x + y * y + z * z)
    ex, ey, ez = x * to_eye, y * to_eye, z * to_eye
    extent = box_extent(points) if extent is None else extent
    diffuse = torch.zeros((views, count), dtype=torch.float32, device=device)
    specular = torch.zeros_like(diffuse)
    # in camera coordinates the box centre is (0, 0, D) and right, up, front are +x, -y, -z
    for (right, up, front), alike in _distinct(LIGHTS_RELATIVE):
        lx, ly, lz = right * extent - x, -up * extent - y, camera.distance - front * extent - z
        inverse = 1 / torch.sqrt(lx * lx + ly * ly + lz * lz)
        lx, ly, lz = lx * inverse, ly * inverse, lz * inverse
        cos_theta = nx * lx + ny * ly + nz * lz
        # e . reflect(-l, n) = 2 (n . l) (e . n) - e . l
        cos_alpha = (2 * cos_theta * (ex * nx + ey * ny + ez * nz) - (ex * lx + ey * ly + ez * lz)).clamp_(0, 1)
        diffuse += alike * DIFFUSE * cos_theta.clamp_(0, 1)
        specular += alike * SPECULAR * cos_alpha.pow_(SHININESS)
    colour = AMBIENT * grey + grey * diffuse + specular
    return torch.round(colour.clamp_(0, 1) * 255).to(torch.int32)


def box_extent(points) -> float:
    """The max extent of the points' axis-aligned bounding box (Open3D's view box), in float64."""
    points = np.asarray(points)
    # the corners in the points' own dtype, then float64: the same numbers as converting every point first
    return float((points.max(axis=0).astype(np.float64) - points.min(axis=0).astype(np.float64)).max())


def _distinct(lights):
    """[(light, how many times it occurs)]: Open3D's four default lights are two pairs of equal ones."""
    return [(light, lights.count(light)) for light in dict.fromkeys(lights)]


def window_depth(depth: np.ndarray, distance: float) -> np.ndarray:
    """(V, P) int64 24-bit window depth of camera z (Mesa's depth buffer); -1 where clipped or behind."""
    near, far = np.float32(NEAR * distance), np.float32(FAR * distance)
    z = np.asarray(depth, np.float32)
    ndc = (far + near) / (far - near) - 2 * far * near / ((far - near) * np.where(z > 0, z, 1))
    scale = np.float64(2**24 - 1)
    window = np.rint((0.5 * ndc.astype(np.float64) + 0.5) * scale)
    return np.where((z >= near) & (z <= far), window, -1).astype(np.int64)


def draw_views(clouds: list[Cloud], rotations: np.ndarray, point_size: float, supersample: int,
               light_on: bool = True, device="cpu") -> np.ndarray:
    """Return (B, V, S, S) uint8 grey views of B clouds, drawn at S * supersample and area-averaged to S.

    rotations: (V, 3, 3) view rotations (the same plan for every cloud); point_size: N in pixels at the
    supersampled resolution. Background white; all clouds must share the camera's image size S.
    """
    size = clouds[0].camera.image_size
    if any(c.camera.image_size != size for c in clouds):
        raise ValueError("clouds of one draw_views call must share the image size")
    views, count = len(rotations), max(len(c.points) for c in clouds)
    u = np.zeros((len(clouds), views, count), np.float32)
    v, depth = np.zeros_like(u), np.full(u.shape, -1, np.int64)
    level = torch.zeros((len(clouds), views, count), dtype=torch.int32, device=device)
    for b, cloud in enumerate(clouds):
        n = len(cloud.points)
        coordinates = cloud.coordinates or view_coordinates(cloud.points, cloud.camera, rotations)
        u[b, :, :n], v[b, :, :n], z = supersampled_positions(cloud.points, cloud.camera, rotations, supersample,
                                                             coordinates)
        depth[b, :, :n] = window_depth(z, cloud.camera.distance)
        # on a CPU view by view, so the shading's many element-wise passes stay in cache
        step = views if torch.device(device).type != "cpu" else 1
        extent = box_extent(cloud.points)
        for k in range(0, views, step):
            level[b, k:k + step, :n] = shade(cloud.points, cloud.normals, cloud.grey, cloud.camera,
                                             rotations[k:k + step], light_on, device, extent,
                                             tuple(c[k:k + step] for c in coordinates))
    images = splat_levels(u.reshape(-1, count), v.reshape(-1, count), depth.reshape(-1, count),
                          level.view(-1, count).cpu().numpy(), point_size, size * supersample, supersample,
                          device=device)
    return images.view(len(clouds), views, size, size).cpu().numpy()


def splat_levels(u, v, depth, level, point_size: float, size: int, block: int = 1, device="cpu") -> torch.Tensor:
    """Return (I, size / block, size / block) uint8: per pixel the level of the nearest point covering it
    (white, 255, where none does), area-averaged over block x block pixels, rounded half up.

    u, v: (I, P) float sub-pixel column and row (pixel centres at integers) in a size x size image;
    depth: (I, P) int64 in [0, 2**24), smaller is nearer, < 0 = not drawn (padding); level: (I, P) int
    8-bit colour; point_size: N (render/masks.py's footprint); block divides size. Ties in depth go to
    the lower point index (GL_LESS keeps the first point drawn). No loop over points.

    Each point writes one key (depth, point index, level: ordered as the depth test orders the points,
    the level riding in the lowest bits) into the cell of its footprint's first pixel (scatter-min); a
    sliding minimum of the footprint's height down the rows, then of its width along the columns, hands
    each pixel the nearest covering point's key. Only the box that holds every drawn footprint is worked
    on: each image's own on a CPU, where images go one at a time (a flat object seen edge-on fills a
    strip), the box of them all on a GPU, which takes them at once.
    """
    images, count = np.shape(depth)
    index_bits = max(int(count - 1).bit_length(), 1)
    if 24 + index_bits + 8 > 63:
        raise ValueError(f"{count} points per image are more than the splat renderer keys hold (2**31)")
    col0, cols, row0, rows = footprints(np.asarray(u), np.asarray(v), point_size)
    depth = np.asarray(depth, np.int64)
    drawn = (depth >= 0) & (col0 + cols > 0) & (col0 < size) & (row0 + rows > 0) & (row0 < size)
    small = size // block
    out = torch.full((images, small, small), 255, dtype=torch.uint8, device=device)
    key = ((depth << (index_bits + 8)) | (np.arange(count, dtype=np.int64) << 8)
           | np.clip(np.asarray(level, np.int64), 0, 255))
    shapes = [(tall, wide, drawn & (rows == tall) & (cols == wide)) for tall, wide in _shapes(point_size)]
    # on a CPU one image at a time keeps the buffers in cache and allocated once; a GPU takes all at once
    group = images if torch.device(device).type != "cpu" else 1
    buffers = _Buffers(device)
    for first in range(0, images, group):
        chunk = slice(first, first + group)
        if not drawn[chunk].any():
            continue  # white
        top, height = _box(row0[chunk], rows[chunk], drawn[chunk], size, block)
        left, width = _box(col0[chunk], cols[chunk], drawn[chunk], size, block)
        best = None
        present = [(tall, wide, drawn_here[chunk]) for tall, wide, drawn_here in shapes if drawn_here[chunk].any()]
        for shape_rows, shape_cols, here in present:
            # the drawn points of this shape, image by image (boolean masks: cheaper than nonzero's index pairs)
            image = np.repeat(np.arange(len(here), dtype=np.int64), here.sum(axis=1))
            # starts[i, r + shape_rows - 1, c + shape_cols - 1] holds the footprints whose first pixel is
            # (top + r, left + c); a footprint reaching into the box from outside it is cut to the box
            tall, wide = height + shape_rows - 1, width + shape_cols - 1
            r = row0[chunk][here] - top + shape_rows - 1
            c = col0[chunk][here] - left + shape_cols - 1
            keep = (r >= 0) & (r < tall) & (c >= 0) & (c < wide)
            cell = (image[keep] * tall + r[keep]) * wide + c[keep]
            starts = buffers.get("starts", (len(here), tall, wide)).fill_(_EMPTY)
            starts.view(-1).scatter_reduce_(0, torch.as_tensor(cell, device=device),
                                            torch.as_tensor(key[chunk][here][keep], device=device), reduce="amin")
            covered = _sliding_min(_sliding_min(starts, shape_rows, 1, buffers, "rows"), shape_cols, 2, buffers,
                                   "columns")
            if best is None:  # kept apart from the scratch buffers only if another shape follows
                best = covered if len(present) == 1 else buffers.get("best", covered.shape).copy_(covered)
            else:
                torch.minimum(best, covered, out=best)
        # the empty key's lowest byte is 255: white where no point is drawn (into a kept buffer: a fresh
        # tensor per image costs its page faults)
        levels = buffers.get("levels", best.shape, torch.float32).copy_(best.bitwise_and_(255))
        # exact sums of at most block**2 levels in float32
        total = torch.nn.functional.avg_pool2d(levels[:, None], block, divisor_override=1)[:, 0].to(torch.int32)
        out[chunk, top // block:(top + height) // block, left // block:(left + width) // block] = \
            ((2 * total + block * block) // (2 * block * block)).to(torch.uint8)
    return out


class _Buffers:
    """Scratch tensors reused across the images of one call (a fresh large tensor costs its page faults)."""

    def __init__(self, device):
        self.device, self.tensors = device, {}

    def get(self, name, shape, dtype=torch.int64) -> torch.Tensor:
        size = int(np.prod(shape))
        if name not in self.tensors or self.tensors[name].numel() < size:
            self.tensors[name] = torch.empty(size, dtype=dtype, device=self.device)
        return self.tensors[name][:size].view(shape)


def _box(first: np.ndarray, extent: np.ndarray, drawn: np.ndarray, size: int, block: int) -> tuple[int, int]:
    """(start, length) along one image axis of the box holding every drawn footprint, clipped to
    [0, size) and aligned to `block`."""
    low = int(np.where(drawn, first, size).min().clip(0, size)) // block * block
    high = -(-int(np.where(drawn, first + extent, 0).max().clip(0, size)) // block) * block
    return low, max(high - low, 0)


def _sliding_min(cells: torch.Tensor, width: int, dim: int, buffers: _Buffers, name: str) -> torch.Tensor:
    """out[k] = min(cells[k .. k + width - 1]) along `dim` (length n - width + 1), by doubling; the
    passes alternate between two buffers called `name`, which `cells` must not be."""
    n = cells.shape[dim]
    span, runs, turn = 1, cells, 0
    while 2 * span <= width:
        length = n - 2 * span + 1
        out = buffers.get(f"{name}{turn}", cells.shape).narrow(dim, 0, length)
        runs = torch.minimum(runs.narrow(dim, 0, length), runs.narrow(dim, span, length), out=out)
        span, turn = 2 * span, 1 - turn
    length = n - width + 1
    if span == width:
        return runs.narrow(dim, 0, length)
    out = buffers.get(f"{name}{turn}", cells.shape).narrow(dim, 0, length)
    return torch.minimum(runs.narrow(dim, 0, length), runs.narrow(dim, width - span, length), out=out)
