"""What a render store row is made with (`RenderOptions`) and the choices of its options; defaults stated once.

Light on purpose (numpy, no Open3D or torch at import): `render --help` reads its defaults from here.
Every user imports them from here (`render/sample_render.py` renders with them).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..shared import strict
from ..shared.errors import ConfigError, StoreSchemaError
from ..shared.limits import Range, check_fields, within
from ..shared.store_schema import RenderRecord
from .view_plan import make_view_plan

GREY = 0.7
LIGHTS = {"on": (True, GREY), "off": (False, GREY), "+": (True, 0.9), "-": (True, 0.5)}
VISIBILITY = ("nearest", "surface")
MASKS = ("splat", "render")
# open3d: Open3D's hybrid search (design §3.2) | grid: a plane fitted to the cells of the organized grid within
# Open3D's radius, at most 3 cells (render/normals.py grid_pca_normals_within) | graph: a plane fitted to each
# point's row of the k-NN graph | auto: grid for a cloud with a grid, open3d for one without (`drawn_normals`)
NORMALS = ("open3d", "grid", "graph", "auto")
# legacy (Open3D Visualizer: the default and reference, for exact paper reproduction) | filament | splat
# (render/splat.py: emulates legacy without Open3D, tests/render/test_splat.py)
RENDERERS = ("legacy", "filament", "splat")  # render/rasterize.py's RENDERERS (Open3D's), then splat
MAX_RENDERED_SIDE = 8192  # image_size x supersample: one view's capture (Open3D's window, the splat buffers)
WORKERS = Range(1, 256)   # render build --workers: processes
THREADS = Range(1, 1024)  # render build --threads: each worker's thread budget


def drawn_normals(normals: str | None, organized: bool) -> str:
    """The estimator a cloud is drawn with (render_sample): auto's is grid for an organized cloud (one with a
    grid), whose patch features change by 0.04-0.09 of a one-pixel camera shift's with it (under issue 24's
    tenth; benchmarks/normals_bench.py), and open3d for the rest (graph's change is 1.6-2x the shift's); None
    (not chosen, e.g. a run recording no options) is open3d, as before the option; the others are themselves."""
    if normals == "auto":
        return "grid" if organized else "open3d"
    return normals or "open3d"


@dataclass(frozen=True, kw_only=True)
class RenderOptions:
    """Everything that decides what a sample's row holds; recorded in the store's `render` attribute."""

    # Ranges (shared/limits.py) keep every array of a row, (V, P, ...) and (S * supersample)^2 per view, of a
    # size a machine holds: the paper renders 9 views of 336 px from at most 336^2 points
    views: int = field(default=9, metadata=within(1, 64))
    view_plan: str = "paper"
    angle_shift: float = 0.0        # radians added to every view angle (paper's ablation); any finite value
    image_size: int = field(default=336, metadata=within(8, 2048))
    # render at image_size * supersample, then area-average down
    supersample: int = field(default=3, metadata=within(1, 8))
    # points a row holds: up to an organized 2048 x 2048 grid
    max_points: int = field(default=336 * 336, metadata=within(1, 2048 * 2048))
    # pixels at the supersampled resolution; datasets.yaml may set it per class
    point_size: float = field(default=6.0, metadata=within(0, 100, lo_open=True))
    light: str = "on"               # on | off | + (stronger) | - (weaker)
    # keep this fraction of points (farthest-point sampling) before rendering
    downsample: float = field(default=1.0, metadata=within(0, 1, lo_open=True))
    visibility: str = "nearest"     # nearest (paper) | surface (within surface_tolerance of the nearest)
    # fraction of the bounding radius, for visibility "surface"
    surface_tolerance: float = field(default=0.01, metadata=within(0, 1))
    knn: int = field(default=8, metadata=within(1, 64))
    fov_degrees: float = field(default=30.0, metadata=within(0, 180, lo_open=True, hi_open=True))
    margin: float = field(default=1.1, metadata=within(0, 100, lo_open=True))  # bounding radius x margin fills a view
    renderer: str = "legacy"        # legacy (Visualizer, EGL) | filament (OffscreenRenderer) | splat (no Open3D)
    # splat (render/masks.py: no second capture; matches the legacy renderer's points, see
    # tests/render/test_masks.py) | render (a second set of captures); None: render for filament, else splat
    masks: str | None = None
    # the dataset's numbers for view_plan "pointad-code" (datasets.yaml `view_plans:`, see render/view_plan.py
    # CodePlan); filled in by render.datasets.dataset_render_options; None = the MVTec 3D-AD script's
    code_plan: dict | None = None
    # NORMALS: open3d | grid (organized clouds only) | graph | auto (grid where the cloud has a grid, else open3d);
    # None: not chosen: `render build` takes an existing store's, else auto (build.chosen_normals), and records it;
    # a render with None draws open3d (`drawn_normals`), as stores before the option (which read open3d)
    normals: str | None = None

    def __post_init__(self):
        check_fields(self)  # every range above; NaN and inf in any float
        if self.image_size * self.supersample > MAX_RENDERED_SIDE:
            raise ConfigError(f"--image-size {self.image_size} x --supersample {self.supersample} renders views of "
                              f"{self.image_size * self.supersample} px; at most {MAX_RENDERED_SIDE}")
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
        if self.normals is not None and self.normals not in NORMALS:
            raise ConfigError(f"--normals must be one of {', '.join(NORMALS)}, got {self.normals!r}")
        if self.visibility not in VISIBILITY:
            raise ConfigError(f"--visibility must be one of {', '.join(VISIBILITY)}, got {self.visibility!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_store(cls, record: RenderRecord, dataset: str, class_name: str, source: str = "store") -> RenderOptions:
        """The options the rows of `dataset`/`class_name` were drawn with, from the store's render record
        (`RenderRecord.drawn`: the class's own point size); an option the store did not record takes its
        default. A value out of range or not a choice is one StoreSchemaError line naming `source` (the store)
        and the option."""
        where = f"{source}: store attribute 'render'"
        try:
            return strict.from_dict(cls, record.drawn(dataset, class_name), where, error=StoreSchemaError)
        except ConfigError as exc:  # the options' own checks name the command-line option, not the store
            raise StoreSchemaError(f"{where}: {exc}") from None

    @property
    def plan(self):
        return make_view_plan(self.view_plan, self.views, self.angle_shift, self.code_plan)
