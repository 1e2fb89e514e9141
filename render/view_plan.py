"""View plans (design §3.3): the rotations that turn one cloud into K views.

Each view k rotates the cloud about its centre by R_k; the camera itself never moves. The released
code's plan ("pointad-code") differs per dataset; its numbers live in datasets.yaml (`view_plans:`),
are read by `CodePlan.from_dict`, and the resolved plan (variant, pre-rotation, angles) is recorded in
the store's `view_plan` attribute.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..shared import strict
from ..shared.errors import ConfigError

PLANS = ("paper", "pointad-code")


def rotation(axis: str, angle: float) -> np.ndarray:
    """(3, 3) right-handed rotation by `angle` radians about the X, Y or Z axis."""
    c, s = np.cos(angle), np.sin(angle)
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    if axis == "z":
        return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    raise ValueError(f"unknown axis {axis!r}")


@dataclass(frozen=True)
class ViewPlan:
    """K views as (axis, angle) pairs; `rotations` gives the (K, 3, 3) matrices R_k @ P, where P is the
    plan's pre-rotation (identity unless the plan has one: the released Eyecandies script pre-tilts the
    cloud, its Real3D-AD script flips it). normals_radius: the plan's normals radius in the dataset's unit
    (None: the renderer's own, relative to the cloud's size). Angles in radians."""

    name: str
    axes: tuple[str, ...]
    angles: tuple[float, ...]
    variant: str = ""
    pre_axes: tuple[str, ...] = ()
    pre_angles: tuple[float, ...] = ()
    normals_radius: float | None = None

    @property
    def views(self) -> int:
        return len(self.angles)

    @property
    def pre_rotation(self) -> np.ndarray:
        out = np.eye(3)
        for axis, angle in zip(self.pre_axes, self.pre_angles):
            out = rotation(axis, angle) @ out
        return out

    @property
    def rotations(self) -> np.ndarray:
        return np.stack([rotation(a, t) for a, t in zip(self.axes, self.angles)]) @ self.pre_rotation

    def to_dict(self) -> dict:
        out = {"name": self.name, "axes": list(self.axes), "angles": [float(a) for a in self.angles]}
        if self.variant:
            out.update(variant=self.variant, pre_axes=list(self.pre_axes),
                       pre_angles=[float(a) for a in self.pre_angles], normals_radius=self.normals_radius)
        return out

    @classmethod
    def from_dict(cls, data: dict, source: str = "view plan") -> ViewPlan:
        """The plan a store's `view_plan` attribute records (`to_dict`'s output)."""
        return strict.from_dict(cls, data, source)


@dataclass(frozen=True, kw_only=True)
class CodePlan:
    """The released code's fixed views for one dataset, as datasets.yaml `view_plans: pointad-code:` gives them.

    Angles in degrees, as the released scripts write them. Defaults are its MVTec 3D-AD script's.
    pre_rotation: [[axis, degrees], ...] applied to the cloud before every view.
    """

    variant: str = "mvtec3d"
    pre_rotation: tuple[tuple[str, float], ...] = ()
    x_tilts: tuple[float, ...] = (-45.0, -15.0, 0.0, 15.0, 45.0)
    y_tilts: tuple[float, ...] = (-30.0, -15.0, 15.0, 30.0)
    normals_radius: float | None = None

    def __post_init__(self):
        # ValueError: strict.from_dict re-raises it as a ConfigError naming the source
        if any(axis not in ("x", "y", "z") for axis, _ in self.pre_rotation):
            raise ValueError(f"pre_rotation axes must be x, y or z, got {[a for a, _ in self.pre_rotation]}")
        if self.normals_radius is not None and not self.normals_radius > 0:
            raise ValueError(f"normals_radius must be > 0, got {self.normals_radius}")

    @classmethod
    def from_dict(cls, data: dict | None, source: str = "view plan 'pointad-code'") -> CodePlan:
        """Validate a mapping; an unknown key, a bad axis or a non-number is an error naming it."""
        return strict.from_dict(cls, {} if data is None else data, source)

    @property
    def views(self) -> int:
        return len(self.x_tilts) + len(self.y_tilts)


def paper_angles(views: int) -> np.ndarray:
    """theta_k = (k - (K - 1) / 2) * 2 pi / (K + 1), k = 0..K-1 (K = 9: -4pi/5 .. 4pi/5 in steps of pi/5)."""
    k = np.arange(views)
    return (k - (views - 1) / 2) * 2 * np.pi / (views + 1)


def make_view_plan(name: str = "paper", views: int = 9, angle_shift: float = 0.0,
                   code_plan: dict | None = None) -> ViewPlan:
    """The paper's circular plan about X (any K >= 1), or the released code's fixed views for one dataset.

    angle_shift (radians) is added to every angle: the paper's rendering-angle ablation.
    code_plan: the dataset's `pointad-code` numbers (see `CodePlan`); None = the MVTec 3D-AD script's.
    """
    if not np.isfinite(angle_shift):
        raise ConfigError(f"--angle-shift must be a finite number of radians, got {angle_shift}")
    if name == "paper":
        if views < 1:
            raise ConfigError(f"--views must be >= 1, got {views}")
        angles = paper_angles(views) + angle_shift
        return ViewPlan(name, ("x",) * views, tuple(float(a) for a in angles))
    if name == "pointad-code":
        code = CodePlan.from_dict(code_plan)
        if views != code.views:
            raise ConfigError(f"view plan 'pointad-code' ({code.variant}) has exactly {code.views} views, not {views}")
        angles = np.radians([*code.x_tilts, *code.y_tilts]) + angle_shift
        return ViewPlan(name, ("x",) * len(code.x_tilts) + ("y",) * len(code.y_tilts),
                        tuple(float(a) for a in angles), code.variant,
                        tuple(axis for axis, _ in code.pre_rotation),
                        tuple(float(np.radians(deg)) for _, deg in code.pre_rotation), code.normals_radius)
    raise ConfigError(f"unknown view plan {name!r}; known: {', '.join(PLANS)}")
