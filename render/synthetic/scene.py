"""Synthetic objects on a regular grid: height field, defect, texture. Pure numpy, deterministic per rng.

An object is a height field h(x, y) >= 0 over a footprint on a support plane; every shape stands
on an 8 mm pedestal so its visible surface is well above the 5 mm background-plane threshold.
Defects change the geometry (and darken the texture); their mask is where the surface moved.
Units are metres, as in MVTec 3D-AD; the Eyecandies and Real3D-AD writers convert them (Blender units, mm).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

CLASSES = ("cookie", "dowel", "dome", "torus", "box")
DEFECTS = ("bump", "dent", "hole", "crack", "scratch")

PEDESTAL = 0.008        # every object's minimum height above the plane
MIN_DEPRESSED = 0.006   # depressions never sink closer than this to the plane (stay object points)
MASK_THRESHOLD = 2e-4   # a surface moved by more than 0.2 mm is anomalous

BASE_COLOURS = {"cookie": (176, 120, 64), "dowel": (196, 160, 110), "dome": (190, 60, 55),
                "torus": (70, 150, 90), "box": (60, 100, 170)}


@dataclass(frozen=True)
class Scene:
    """One object on a grid. height: (H, W) metres above the plane (0 off the object);
    footprint: (H, W) bool; defect_mask: (H, W) bool; texture: (H, W, 3) uint8."""

    height: np.ndarray
    footprint: np.ndarray
    defect_mask: np.ndarray
    texture: np.ndarray


def _shape(class_name: str, x: np.ndarray, y: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """(height above the pedestal, footprint) of a class in object coordinates (metres)."""
    r = np.hypot(x, y)
    if class_name == "cookie":
        radius = 0.030 * scale
        inside = r < radius
        return 0.003 + 0.002 * (1 - (r / radius) ** 2), inside
    if class_name == "dowel":
        half_length, radius = 0.034 * scale, 0.009 * scale
        inside = (np.abs(x) < half_length) & (np.abs(y) < radius)
        return np.sqrt(np.clip(radius ** 2 - y ** 2, 0, None)), inside
    if class_name == "dome":
        radius = 0.028 * scale
        inside = r < radius
        return 0.018 * scale * np.sqrt(np.clip(1 - (r / radius) ** 2, 0, None)), inside
    if class_name == "torus":
        major, minor = 0.022 * scale, 0.008 * scale
        ring = np.abs(r - major)
        angle = np.arctan2(y, x)
        inside = (ring < minor) & (np.abs(angle) > np.pi / 5)  # a ring with a gap: a torus section
        return np.sqrt(np.clip(minor ** 2 - ring ** 2, 0, None)), inside
    if class_name == "box":
        inside = (np.abs(x) < 0.026 * scale) & (np.abs(y) < 0.018 * scale)
        return np.full_like(x, 0.012 * scale), inside
    raise ValueError(f"unknown synthetic class {class_name!r}; known: {', '.join(CLASSES)}")


def _segment_distance(x, y, start, end):
    """Distance of each (x, y) to the segment start-end."""
    d = np.subtract(end, start)
    t = np.clip(((x - start[0]) * d[0] + (y - start[1]) * d[1]) / (d @ d), 0, 1)
    return np.hypot(x - start[0] - t * d[0], y - start[1] - t * d[1])


def _displacement(defect: str, x, y, centre, rng) -> np.ndarray:
    """Signed height change of a defect centred at `centre` (metres)."""
    rho = np.hypot(x - centre[0], y - centre[1])
    if defect == "bump":
        return 0.003 * np.exp(-(rho / 0.003) ** 2 / 2)
    if defect == "dent":
        return -0.0025 * np.exp(-(rho / 0.0035) ** 2 / 2)
    if defect == "hole":
        return np.where(rho < 0.004, -0.006, 0.0)
    length, width, depth = {"crack": (0.018, 0.0012, 0.003), "scratch": (0.022, 0.0007, 0.0008)}[defect]
    angle = rng.uniform(0, np.pi)
    half = 0.5 * length * np.array([np.cos(angle), np.sin(angle)])
    distance = _segment_distance(x, y, np.asarray(centre) - half, np.asarray(centre) + half)
    return np.where(distance < width, -depth * (1 - (distance / width) ** 2), 0.0)


def _defect_centre(footprint: np.ndarray, x, y, margin_px: float, rng) -> tuple[float, float]:
    """A random grid position inside the footprint, at least `margin_px` from its edge."""
    inner = ndimage.distance_transform_edt(footprint) > margin_px
    candidates = np.flatnonzero(inner if inner.any() else footprint)
    pick = candidates[rng.integers(len(candidates))]
    return float(x.flat[pick]), float(y.flat[pick])


def _texture(class_name: str, x, y, height, footprint, defect_mask, rng) -> np.ndarray:
    """RGB: a plane in grey and the object in its class colour, with stripes, noise and shading."""
    gy, gx = np.gradient(height)
    shade = 1.0 / np.sqrt(1 + (gx * 400) ** 2 + (gy * 400) ** 2)
    pattern = 0.85 + 0.1 * np.sin(x * 900 + rng.uniform(0, 6)) * np.sin(y * 700) + 0.05 * rng.standard_normal(x.shape)
    base = np.asarray(BASE_COLOURS[class_name], dtype=np.float64)
    plane = np.full(x.shape + (3,), 150.0) * (0.95 + 0.05 * rng.standard_normal(x.shape))[..., None]
    colour = np.where(footprint[..., None], base * (pattern * shade)[..., None], plane)
    colour = np.where(defect_mask[..., None], colour * 0.6, colour)  # defects are darker, as burns or dirt are
    return np.clip(colour, 0, 255).astype(np.uint8)


def make_scene(class_name: str, defect: str | None, x: np.ndarray, y: np.ndarray,
               rng: np.random.Generator) -> Scene:
    """The object of `class_name` (randomly posed) on the grid (x, y), with `defect` (None = good)."""
    angle = rng.uniform(0, 2 * np.pi)
    shift = rng.uniform(-0.004, 0.004, size=2)
    scale = rng.uniform(0.95, 1.05)
    c, s = np.cos(angle), np.sin(angle)
    xo, yo = c * (x - shift[0]) + s * (y - shift[1]), -s * (x - shift[0]) + c * (y - shift[1])
    relief, footprint = _shape(class_name, xo, yo, scale)
    height = np.where(footprint, PEDESTAL + relief, 0.0)
    defect_mask = np.zeros_like(footprint)
    if defect is not None:
        if defect not in DEFECTS:
            raise ValueError(f"unknown synthetic defect {defect!r}; known: {', '.join(DEFECTS)}")
        pixel = abs(x[0, 1] - x[0, 0])
        centre = _defect_centre(footprint, x, y, 0.004 / pixel, rng)
        moved = np.where(footprint, _displacement(defect, x, y, centre, rng), 0.0)
        defective = np.where(footprint, np.maximum(height + moved, MIN_DEPRESSED), 0.0)
        defect_mask = footprint & (np.abs(defective - height) > MASK_THRESHOLD)
        height = defective
    texture = _texture(class_name, x, y, height, footprint, defect_mask, rng)
    return Scene(height=height, footprint=footprint, defect_mask=defect_mask, texture=texture)
