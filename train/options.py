"""What a training run is (`TrainConfig`): its settings and their defaults, stated once.

Light on purpose (no torch at import): the command line takes its defaults from here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Literal, get_args

from ..shared.errors import ConfigError
from ..shared.limits import Range, check_fields, within
from .loss_terms import parse_loss_terms
from .model.model_config import DEFAULT_MODEL, DEFAULT_SEED, MAX_BLOCKS

Prompt = Literal["agnostic", "coop"]  # TrainConfig.prompt: PointAD, PointAD-CoOp
PROMPTS = get_args(Prompt)
# seeds: what numpy's legacy seeding takes, and `seed * 100_003 + epoch` (train/data.py's data order) stays
# within torch.Generator.manual_seed's 64 bits
SEEDS = within(0, 2**32 - 1)
LOADER_WORKERS = Range(0, 256)  # --loader-workers: DataLoader processes (0 = read in the training process)


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """A training run. Everything here goes into every checkpoint; `resume` requires it unchanged
    except for `epochs` (a finished run may be extended) and the spelling of `store`: the store is
    compared by its fingerprint (its content), so a relative path, an absolute one or a moved copy
    are the same run. `cache_memory` is no part of a run either: it only says how much of the data is kept
    in memory between epochs (results are the same whatever it is)."""

    store: str
    class_name: str
    dataset: str | None = None
    epochs: int = field(default=15, metadata=within(1, 100_000))
    batch_size: int = field(default=4, metadata=within(1, 4096))
    # Adam's step size; 10 is 10^4 times the paper's: beyond that the prompts only overflow
    lr: float = field(default=1e-3, metadata=within(0, 10, lo_open=True))
    betas: tuple[float, float] = field(default=(0.5, 0.999), metadata=within(0, 1, hi_open=True))  # Adam's
    seed: int = field(default=DEFAULT_SEED, metadata=SEEDS)
    model: str = DEFAULT_MODEL
    # tapped layers; None = the model config's default
    layers: tuple[int, ...] | None = field(default=None, metadata=within(1, MAX_BLOCKS))
    # DPAM in blocks dpam_start..last (0 = off); None = default
    dpam_start: int | None = field(default=None, metadata=within(0, MAX_BLOCKS))
    prompt: Prompt = "agnostic"                # agnostic (PointAD) | coop (PointAD-CoOp)
    loss_terms: str = "all"
    feature_cache: bool = True
    # bytes of features and samples kept in memory between epochs, both caches together; features are
    # kept first (on the device). 8 GiB holds a paper-size class: ~130 samples x 9 views of ViT-L
    # features in float16 (30 MiB each) plus their store rows; more rows are re-read from disk each epoch
    cache_memory: int = field(default=8 * 2**30, metadata=within(0, 2**50))  # up to 1 PiB: a cap, not a need

    def __post_init__(self):
        check_fields(self)
        if self.prompt not in PROMPTS:
            raise ConfigError(f"--prompt must be {' or '.join(PROMPTS)}, got {self.prompt!r}")
        try:
            parse_loss_terms(self.loss_terms)
        except ValueError as exc:
            raise ConfigError(f"--loss-terms: {exc}") from None

    def identity(self) -> dict:
        """The settings a checkpoint must share with a run that resumes from it."""
        data = asdict(self)
        data.pop("epochs")
        data.pop("store")  # compared by fingerprint, not by how its path is spelled
        data.pop("cache_memory")  # changes memory and speed, never results
        data["betas"] = list(self.betas)
        data["layers"] = None if self.layers is None else list(self.layers)
        return data


def config_from_options(*, store, model, clip_weights=None, no_feature_cache=False, class_name="", **options):
    """`TrainConfig` from command options (those that are not its fields are ignored; missing ones, and list
    options not given, take its defaults); the weights are located first, so missing ones stop a run before
    any work. `model` is a config name (`--model auto` already resolved)."""
    from .model.model_config import load_model_config
    from .model.weights import locate_weights
    locate_weights(load_model_config(model), clip_weights)
    known = {f.name for f in fields(TrainConfig)}
    options = {k: v for k, v in options.items() if v != ()}
    if "loss_terms" in options:  # a list option; TrainConfig takes the comma list
        options["loss_terms"] = ",".join(options["loss_terms"])
    return TrainConfig(store=str(store), class_name=class_name, model=model, feature_cache=not no_feature_cache,
                       **{k: v for k, v in options.items() if k in known})

