"""View plans (SPEC 3.3): the rotations that turn one cloud into K views.

Each view k rotates the cloud about its centre by R_k; the camera itself never moves.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shared.errors import ConfigError

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
    """K views as (axis, angle) pairs; `rotations` gives the (K, 3, 3) matrices."""

    name: str
    axes: tuple[str, ...]
    angles: tuple[float, ...]

    @property
    def views(self) -> int:
        return len(self.angles)

    @property
    def rotations(self) -> np.ndarray:
        return np.stack([rotation(a, t) for a, t in zip(self.axes, self.angles)])

    def to_dict(self) -> dict:
        return {"name": self.name, "axes": list(self.axes), "angles": [float(a) for a in self.angles]}

    @classmethod
    def from_dict(cls, data: dict) -> "ViewPlan":
        return cls(data["name"], tuple(data["axes"]), tuple(float(a) for a in data["angles"]))


def paper_angles(views: int) -> np.ndarray:
    """theta_k = (k - (K - 1) / 2) * 2 pi / (K + 1), k = 0..K-1 (K = 9: -4pi/5 .. 4pi/5 in steps of pi/5)."""
    k = np.arange(views)
    return (k - (views - 1) / 2) * 2 * np.pi / (views + 1)


def make_view_plan(name: str = "paper", views: int = 9, angle_shift: float = 0.0) -> ViewPlan:
    """The paper's circular plan about X (any K >= 1), or the released code's fixed 9 views.

    angle_shift (radians) is added to every angle: the paper's rendering-angle ablation.
    """
    if not np.isfinite(angle_shift):
        raise ConfigError(f"--angle-shift must be a finite number of radians, got {angle_shift}")
    if name == "paper":
        if views < 1:
            raise ConfigError(f"--views must be >= 1, got {views}")
        angles = paper_angles(views) + angle_shift
        return ViewPlan(name, ("x",) * views, tuple(float(a) for a in angles))
    if name == "pointad-code":
        if views != 9:
            raise ConfigError(f"view plan 'pointad-code' has exactly 9 views, not {views}")
        x_tilts = np.radians([-45.0, -15.0, 0.0, 15.0, 45.0]) + angle_shift
        y_tilts = np.radians([-30.0, -15.0, 15.0, 30.0]) + angle_shift
        return ViewPlan(name, ("x",) * 5 + ("y",) * 4, tuple(float(a) for a in (*x_tilts, *y_tilts)))
    raise ConfigError(f"unknown view plan {name!r}; known: {', '.join(PLANS)}")
