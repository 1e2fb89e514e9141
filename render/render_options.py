"""What a render store row is made with (`RenderOptions`) and the choices of its options; defaults stated once.

Light on purpose (numpy, no Open3D or torch at import): `render --help` reads its defaults from here.
`render/sample_render.py`, which renders with these options, re-exports them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from pointad.render.view_plan import make_view_plan
from pointad.shared.errors import ConfigError

GREY = 0.7
LIGHTS = {"on": (True, GREY), "off": (False, GREY), "+": (True, 0.9), "-": (True, 0.5)}
VISIBILITY = ("nearest", "surface")
MASKS = ("splat", "render")
# legacy (Open3D Visualizer: the default and reference, for exact paper reproduction) | filament | splat
# (render/splat.py: emulates legacy without Open3D, tests/render/test_splat.py)
RENDERERS = ("legacy", "filament", "splat")  # render/rasterize.py's RENDERERS (Open3D's), then splat


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
