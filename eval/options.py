"""The eval settings and their defaults, stated once: `ReportConfig` (one `eval report`) and `MutualOptions`
(`--method mutual-scoring`, eval/mutual.py), with the choices their options take.

Light on purpose (no torch at import): the command line reads its defaults from here, and every user
imports these names from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..shared.errors import ConfigError
from ..shared.limits import check_fields, within
from ..train.model.model_config import DEFAULT_MODEL, MAX_BLOCKS

PROTOCOLS = ("points", "pointad-compat", "mvtec-official")
OFFICIAL = "mvtec-official"  # computed from the maps --export-maps writes (eval/export_maps.py)
# --protocol also takes "both" (points and pointad-compat, as before the third) and "all"
PROTOCOL_CHOICES = {"both": PROTOCOLS[:2], "all": PROTOCOLS}
# what each number of a table follows, said beside it in the report (design §7.3)
PROTOCOL_DEFINITIONS = {
    "points": "valid points only (missing cells and padding count nowhere); AUPRO regions on the grid or k-NN graph",
    "pointad-compat": "the released PointAD code: full grid, missing cells score 0 and label 0, 200-threshold AUPRO",
    OFFICIAL: "MVTec 3D-AD's evaluation script on the exported maps: every pixel of each ground-truth PNG "
              "(background included), AUPRO up to FPR 0.3, I-AUROC and AP from each map's maximum",
}
SETTINGS = ("one-vs-rest", "cross-dataset")
REPORT_FORMATS = ("md", "csv", "json")  # eval/report.py's FORMATS
MUTUAL = "mutual-scoring"
METHODS = ("pointad", "clip-rendering", MUTUAL)
VIEW_MODES = ("same", "all")
# mutual scoring (eval/mutual_math.py): neighbourhood sizes, interval-average share, re-scoring
# neighbourhoods, and the memory bound of one distance block
RADII = (1, 3, 5)
FRACTION = 0.3
RESCORE_KS = (1, 2, 3)
BLOCK_BYTES = 256 * 2**20


@dataclass(frozen=True, kw_only=True)
class MutualOptions:
    """radii: neighbourhood sizes r (odd, patches); fraction: the interval average's share of the N - 1 other
    samples; views: "same" (view k against view k of the others) or "all" (against every view of the
    others); layers: tapped layers, 1-based (None: the model config's); rescore_ks: neighbourhood sizes of
    the sample re-scoring, () for none; block_bytes: the distance block's memory bound."""

    # patches: up to the whole grid of the largest CLIP (2048 px / 14 px patches = 146)
    radii: tuple[int, ...] = field(default=RADII, metadata=within(1, 145, option="--mutual-radii"))
    fraction: float = field(default=FRACTION, metadata=within(0, 1, lo_open=True, option="--mutual-fraction"))
    views: str = "same"
    layers: tuple[int, ...] | None = field(default=None, metadata=within(1, MAX_BLOCKS, option="--mutual-layers"))
    # neighbouring samples (0 on the command line: no re-scoring)
    rescore_ks: tuple[int, ...] = field(default=RESCORE_KS, metadata=within(1, 100_000, option="--rescore-k"))
    block_bytes: int = field(default=BLOCK_BYTES, metadata=within(2**20, 2**40))

    def __post_init__(self):
        check_fields(self)
        if not self.radii or any(r % 2 == 0 for r in self.radii):
            raise ConfigError(f"--mutual-radii must be odd numbers >= 1, got {list(self.radii)}")
        if self.views not in VIEW_MODES:
            raise ConfigError(f"--mutual-views must be one of {', '.join(VIEW_MODES)}, got {self.views!r}")


@dataclass(frozen=True, kw_only=True)
class ReportConfig:
    """One `eval report`. checkpoints: run directories (their last checkpoint) or checkpoint files;
    model: only for the clip-rendering baseline (a run's model comes from its checkpoint)."""

    store: str
    dataset: str
    setting: str = "one-vs-rest"
    checkpoints: tuple[str, ...] = ()
    classes: tuple[str, ...] | None = None
    protocol: str = "points"
    method: str = "pointad"
    model: str = DEFAULT_MODEL
    clip_weights: str | None = None
    batch_size: int = field(default=4, metadata=within(1, 4096))
    figures: str | None = None        # folder for `eval.report_figures` (first run only)
    # anomalous samples per class drawn (plus one good)
    figure_samples: int = field(default=2, metadata=within(0, 1000))
    figure_ids: tuple[str, ...] = ()  # or exactly these sample ids
    compare_paper: bool = False
    mutual: MutualOptions = MutualOptions()  # --method mutual-scoring only (eval/mutual.py)
    export_maps: str | None = None    # folder for `eval.export_maps` (every run's maps; the mvtec-official protocol)
    dataset_root: str | None = None   # the test dataset's folder (ground-truth PNGs); None: datasets.yaml's

    def __post_init__(self):
        check_fields(self)
        for name, allowed in (("setting", SETTINGS), ("method", METHODS), ("protocol", (*PROTOCOLS, *PROTOCOL_CHOICES))):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"--{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.method == "pointad" and not self.checkpoints:
            raise ConfigError("--method pointad needs --checkpoints (run directories or checkpoint files)")
        if self.method in ("clip-rendering", MUTUAL) and self.checkpoints:
            raise ConfigError(f"--method {self.method} uses no training; drop --checkpoints")
        if OFFICIAL in self.protocols and self.export_maps is None:
            raise ConfigError(f"--protocol {self.protocol} scores the exported maps: give --export-maps DIR")

    @property
    def protocols(self) -> tuple[str, ...]:
        return PROTOCOL_CHOICES.get(self.protocol, (self.protocol,))
