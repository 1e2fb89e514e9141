"""The eval settings and their defaults, stated once: `ReportConfig` (one `eval report`) and `MutualOptions`
(`--method mutual-scoring`, eval/mutual.py), with the choices their options take.

Light on purpose (no torch at import): the command line reads its defaults from here. `eval/report.py`,
`eval/mutual.py` and `eval/mutual_scoring.py` re-export what they used to define.
"""

from __future__ import annotations

from dataclasses import dataclass

from pointad.shared.errors import ConfigError
from pointad.train.model.model_config import DEFAULT_MODEL

PROTOCOLS = ("points", "pointad-compat")
SETTINGS = ("one-vs-rest", "cross-dataset")
REPORT_FORMATS = ("md", "csv", "json")  # eval/report.py's FORMATS
MUTUAL = "mutual-scoring"
METHODS = ("pointad", "clip-rendering", MUTUAL)
VIEW_MODES = ("same", "all")
# mutual scoring (eval/mutual_scoring.py): neighbourhood sizes, interval-average share, re-scoring
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

    radii: tuple[int, ...] = RADII
    fraction: float = FRACTION
    views: str = "same"
    layers: tuple[int, ...] | None = None
    rescore_ks: tuple[int, ...] = RESCORE_KS
    block_bytes: int = BLOCK_BYTES

    def __post_init__(self):
        if not self.radii or any(r < 1 or r % 2 == 0 for r in self.radii):
            raise ConfigError(f"--mutual-radii must be odd numbers >= 1, got {list(self.radii)}")
        if not 0 < self.fraction <= 1:
            raise ConfigError(f"--mutual-fraction must be in (0, 1], got {self.fraction}")
        if self.views not in VIEW_MODES:
            raise ConfigError(f"--mutual-views must be one of {', '.join(VIEW_MODES)}, got {self.views!r}")
        if any(k < 1 for k in self.rescore_ks):
            raise ConfigError(f"--rescore-k must be >= 1, got {list(self.rescore_ks)}")


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
    batch_size: int = 4
    figures: str | None = None        # folder for `eval.report_figures` (first run only)
    figure_samples: int = 2           # anomalous samples per class drawn (plus one good)
    figure_ids: tuple[str, ...] = ()  # or exactly these sample ids
    compare_paper: bool = False
    mutual: MutualOptions = MutualOptions()  # --method mutual-scoring only (eval/mutual.py)

    def __post_init__(self):
        for name, allowed in (("setting", SETTINGS), ("method", METHODS), ("protocol", (*PROTOCOLS, "both"))):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"--{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.method == "pointad" and not self.checkpoints:
            raise ConfigError("--method pointad needs --checkpoints (run directories or checkpoint files)")
        if self.method in ("clip-rendering", MUTUAL) and self.checkpoints:
            raise ConfigError(f"--method {self.method} uses no training; drop --checkpoints")
        if self.figure_samples < 0:
            raise ConfigError(f"--figure-samples must be >= 0, got {self.figure_samples}")

    @property
    def protocols(self) -> tuple[str, ...]:
        return PROTOCOLS if self.protocol == "both" else (self.protocol,)
