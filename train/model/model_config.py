"""Which CLIP the model uses and how its vision tower is tapped (design §5); one JSON file per model.

`train/model/model_configs/<name>.json` holds the keys of `ModelConfig`; `load_model_config` reads one.
Block and layer numbers are 1-based as users see them ("blocks 6..24"); `train/model/backbone.py`
converts them once. No open_clip here: this module is data only.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ...shared import strict
from ...shared.errors import ConfigError
from ...shared.limits import FINITE, OutOfRange, Range, check_fields, check_value, within

CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
# other spellings users type for the same file; names are also matched case-insensitively
DEFAULT_MODEL = "vit-l-14-336"  # the paper's backbone, OpenAI's ViT-L/14 at 336 px
DEFAULT_SEED = 111  # the released scripts' seed: prompt initialisation and a random-weights model's weights
ALIASES = {"vit-l-14-336-quickgelu": "vit-l-14-336", "vit-l/14@336": "vit-l-14-336"}
MAX_BLOCKS = 256  # block and layer numbers (ViT-L has 24, the largest CLIPs 48)
IMAGE_SIZES = within(32, 2048)
# the numbers of an inline open_clip architecture (a checkpoint or a JSON file may claim any): each within
# these, and both towers together at most MAX_PARAMETERS, so a config claiming width 1e9 is refused before
# anything is allocated
_WIDTH, _LAYERS, _HEADS = Range(1, 8192), Range(1, MAX_BLOCKS), Range(1, 256)
OPEN_CLIP_BOUNDS = {
    "embed_dim": Range(1, 8192),
    "vision_cfg.image_size": Range(32, 2048), "vision_cfg.patch_size": Range(1, 2048), "vision_cfg.width": _WIDTH,
    "vision_cfg.layers": _LAYERS, "vision_cfg.head_width": _WIDTH, "vision_cfg.heads": _HEADS,
    "vision_cfg.mlp_ratio": Range(0, 64, lo_open=True),
    "text_cfg.context_length": Range(1, 1024), "text_cfg.vocab_size": Range(1, 2**20), "text_cfg.width": _WIDTH,
    "text_cfg.heads": _HEADS, "text_cfg.layers": _LAYERS, "text_cfg.mlp_ratio": Range(0, 64, lo_open=True),
}
MAX_PARAMETERS = 2**33  # ~8.6e9 (ViT-bigG/14's CLIP has 2.5e9): 32 GiB in float32


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """A frozen CLIP backbone and its DPAM taps (design §5). Defaults live here, once.

    open_clip_config: the open_clip architecture (embed_dim, quick_gelu, vision_cfg, text_cfg) for an
    architecture open_clip does not ship (tiny); it is registered under open_clip_name. None means
    open_clip's built-in config of that name.
    """

    name: str                                  # the config's own name: "vit-l-14-336", "tiny"
    label: str                                 # what every output says: "tiny (random weights)"
    open_clip_name: str                        # "ViT-L-14-336-quickgelu"; tiny registers "pointad-tiny"
    pretrained: str | None = None              # open_clip pretrained tag ("openai"), None for random weights
    random_init: bool = False                  # True: seeded random weights, no file needed (tests, smoke runs)
    quick_gelu: bool = True                    # the OpenAI weights were trained with QuickGELU
    image_size: int = field(default=336, metadata=IMAGE_SIZES)  # renderings are S x S with S = image_size
    # DPAM blocks, 1-based, a run ending at the last block
    dual_path_blocks: tuple[int, ...] = field(default=tuple(range(6, 25)), metadata=within(1, MAX_BLOCKS))
    # surgery-path outputs used for patch maps, 1-based
    tap_layers: tuple[int, ...] = field(default=(6, 12, 18, 24), metadata=within(1, MAX_BLOCKS))
    open_clip_config: dict | None = None

    def __post_init__(self):
        where = f"model config '{self.name}'"
        for key in ("dual_path_blocks", "tap_layers"):
            if any(v < 1 for v in getattr(self, key)):  # said before the general range: numbers count from 1
                raise ConfigError(f"{where}: '{key}' must hold 1-based block numbers, got {list(getattr(self, key))}")
        check_fields(self, where)
        if self.random_init == (self.pretrained is not None):
            raise ConfigError(f"{where}: set exactly one of 'pretrained' (a weights tag) and 'random_init': true")
        for key in ("dual_path_blocks", "tap_layers"):
            value = getattr(self, key)
            if list(value) != sorted(set(value)):
                raise ConfigError(f"{where}: '{key}' must be increasing without repeats, got {list(value)}")
        if not self.tap_layers:
            raise ConfigError(f"{where}: 'tap_layers' is empty; name at least one layer")
        blocks = self.dual_path_blocks
        if blocks and list(blocks) != list(range(blocks[0], blocks[-1] + 1)):
            raise ConfigError(f"{where}: 'dual_path_blocks' must be one consecutive run, got {list(blocks)}")
        if self.open_clip_config is not None:
            missing = {"embed_dim", "vision_cfg", "text_cfg"} - set(self.open_clip_config)
            if missing:
                raise ConfigError(f"{where}: 'open_clip_config' lacks {sorted(missing)}")
            if bool(self.open_clip_config.get("quick_gelu", False)) != self.quick_gelu:
                raise ConfigError(f"{where}: 'open_clip_config' quick_gelu disagrees with 'quick_gelu'")
            check_architecture_numbers(self.open_clip_config, where)

    @property
    def dual_path_start(self) -> int | None:
        """0-based index of the first DPAM block, None without a dual path."""
        return self.dual_path_blocks[0] - 1 if self.dual_path_blocks else None

    @property
    def tap_indices(self) -> tuple[int, ...]:
        """0-based block indices whose outputs are tapped."""
        return tuple(layer - 1 for layer in self.tap_layers)

    def with_dual_path(self, blocks) -> ModelConfig:
        """The same config with other DPAM blocks (1-based); `range(a, n + 1)` or () for none."""
        return ModelConfig.from_dict({**self.to_dict(), "dual_path_blocks": list(blocks)}, source=self.name)

    def with_taps(self, layers) -> ModelConfig:
        """The same config with other tapped layers (1-based), e.g. (24,) for the released scripts' maps."""
        return ModelConfig.from_dict({**self.to_dict(), "tap_layers": list(layers)}, source=self.name)

    def to_dict(self) -> dict:
        """JSON-ready dict; `from_dict(to_dict())` gives an equal config."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data: dict, source: str = "model config") -> ModelConfig:
        """Validate a mapping (a JSON file, a checkpoint's config); an unknown key is an error naming it."""
        return strict.from_dict(cls, data, source)


def check_architecture_numbers(arch: dict, where: str) -> None:
    """OutOfRange unless every number of an open_clip architecture dict is finite, those of OPEN_CLIP_BOUNDS are
    within their range, and the two towers hold at most MAX_PARAMETERS (estimated: 12 width^2 per block, plus
    the embeddings). Messages name the key ('open_clip_config.vision_cfg.width')."""
    def walk(value, path):
        if isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{path}.{key}" if path else str(key))
        elif isinstance(value, (list, tuple)):  # open_clip takes (H, W) image sizes, per-stage layer counts
            for item in value:
                walk(item, path)
        elif path in OPEN_CLIP_BOUNDS or isinstance(value, float):
            kind = float if "mlp_ratio" in path or path not in OPEN_CLIP_BOUNDS else int
            check_value(value, OPEN_CLIP_BOUNDS.get(path, FINITE), f"{where}: 'open_clip_config.{path}'", kind,
                        key=f"open_clip_config.{path}")
    walk(arch, "")
    vision, text = arch.get("vision_cfg") or {}, arch.get("text_cfg") or {}

    def number(cfg, key, default, combine=max):
        value = cfg.get(key, default)
        return combine(value) if isinstance(value, (list, tuple)) and value else value
    # open_clip's defaults (CLIPVisionCfg, CLIPTextCfg) where the dict leaves a key out
    v_width, v_layers = number(vision, "width", 768), number(vision, "layers", 12, sum)
    grid = number(vision, "image_size", 224) // number(vision, "patch_size", 16)
    t_width, t_layers = number(text, "width", 512), number(text, "layers", 12)
    parameters = (12 * v_width**2 * v_layers + (grid**2 + 1) * v_width + 12 * t_width**2 * t_layers
                  + (number(text, "vocab_size", 49408) + number(text, "context_length", 77)) * t_width)
    if parameters > MAX_PARAMETERS:
        raise OutOfRange("open_clip_config", f"describes ~{parameters:.3g} parameters, more than "
                         f"{MAX_PARAMETERS:.3g} (a real CLIP has fewer)", f"{where}: 'open_clip_config'")


def known_model_configs() -> list[str]:
    """Names of the shipped configs, sorted: ["tiny", "vit-l-14-336"]."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def load_model_config(name: str) -> ModelConfig:
    """Read `train/model/model_configs/<name>.json`; `name` is case-insensitive ("ViT-L-14-336" works).

    A path to a .json file of the same keys is read as well. Unknown name -> ConfigError listing the known.
    """
    path = Path(name)
    if path.suffix == ".json" and path.is_file():
        source = str(path)
    else:
        key = name.strip().lower()
        key = ALIASES.get(key, key)
        path = CONFIG_DIR / f"{key}.json"
        source = f"{path.name}"
        if key not in known_model_configs():  # a shipped name only: never a path built from what was typed
            raise ConfigError(f"unknown model '{name}'; known: {', '.join(known_model_configs())}")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{source}: cannot read model config: {exc}") from exc
    return ModelConfig.from_dict(data, source=source)


def model_config_for(name: str, layers=None, dpam_start: int | None = None) -> ModelConfig:
    """The model a command asks for: config `name` with other tapped `layers` (1-based) and the dual path
    from block `dpam_start` to the top (0: no dual path); None keeps the config's own."""
    config = load_model_config(name)
    if layers is not None:
        config = config.with_taps(layers)
    if dpam_start is not None:
        last = (config.dual_path_blocks or config.tap_layers)[-1]  # the dual path always ends at the top block
        if dpam_start > last:  # range(dpam_start, last + 1) would be empty: the dual path silently off
            raise ConfigError(f"--dpam-start {dpam_start}: model '{config.name}' has blocks 1..{last}; "
                              "0 turns the dual path off")
        config = config.with_dual_path(range(dpam_start, last + 1) if dpam_start else ())
    return config


def check_image_size(config: ModelConfig, image_size: int, source) -> None:
    """Refuse renderings of another size than the model's input, in one line naming `source` (a store), before
    any weights are loaded or images read."""
    if int(image_size) != config.image_size:
        raise ConfigError(f"{source}: renderings are {int(image_size)} px, model '{config.name}' takes "
                          f"{config.image_size} px (render build --image-size {config.image_size}, or a model config "
                          f"with image_size {int(image_size)})")
