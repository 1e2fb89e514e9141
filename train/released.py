"""`train import-released`: the authors' released prompt checkpoints (zqhang/PointAD) as runs of ours.

The released training script saves, after each epoch, `{"prompt_learner": <state dict>}` as
`exps_<depth>_<n_ctx>_<t_n_ctx>_mv9_<data>_336_4/<class>/epoch_<N>.pth` (<data>: mvtec_3d, eye_3d,
real_3d). With E learnable words (n_ctx), n_pos deep positions (t_n_ctx), deep prompt depth D, text width
W and context length L, its state dict holds (the key strings are data we read, not names we use):

| released key                                   | shape              | here                                  |
|------------------------------------------------|--------------------|---------------------------------------|
| ctx_pos                                        | (1, 1, E, W)       | ctx[0], words before "object."        |
| ctx_neg                                        | (1, 1, E, W)       | ctx[1], words before "damaged object."|
| compound_prompts_text.<j>, j = 0..D-2          | (n_pos, W)         | deep[j], rounded to float16 (below)   |
| compound_prompt_projections.<j>.weight / .bias | (896, W) / (896,)  | checked, dropped: never used          |
| token_prefix_pos / token_prefix_neg            | (1, 1, 1, W)       | checked, dropped: frozen embeddings   |
| token_suffix_pos / token_suffix_neg            | (1, 1, L-1-E, W)   | checked, dropped: frozen embeddings   |
| tokenized_prompts_pos / tokenized_prompts_neg  | (1, 1, L) int      | checked against our agnostic template |

The released text encoder casts each deep prompt with `.half()` before it replaces the hidden states of
positions 1..n_pos at the input of text layers 2..D, so the numbers it scores with are the float16
roundings of the stored ones: the import stores those (as float32), and scoring with the imported run is
scoring with what the released code used. The learned words (ctx) are used as stored. The released
forward pass never applies the `compound_prompt_projections` linear layers.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..shared.errors import CheckpointMismatchError, ConfigError, PointADError
from ..shared.lock import writer_lock
from .model.checkpoint import save_checkpoint
from .model.model_config import ModelConfig, load_model_config
from .model.prompts import PromptLearner
from .model.torch_files import load_checkpoint_file
from .options import TrainConfig
from .run_record import ImportedFrom, RunRecord, write_run_record

TOP_KEY = "prompt_learner"
PROJECTION_WIDTH = 896  # the released code's unused projection layers map W -> 896
# the released scripts' save folders: exps_<depth>_<n_ctx>_<t_n_ctx>_mv<views>_<data>_<size>_<batch>/<class>/
EXPERIMENT_DIR = re.compile(r"^exps_(\d+)_(\d+)_(\d+)_mv\d+_([a-z0-9_]+?)_\d+_\d+$")
EPOCH_NAME = re.compile(r"^epoch_(\d+)\.pth?$")
# <data> of the folder name -> our dataset name and the vision layers its script tapped (--features_list)
RELEASED_DATA = {"mvtec_3d": ("mvtec3d", (24,)), "eye_3d": ("eyecandies", (24,)),
                 "real_3d": ("real3d", (6, 12, 18, 24))}


@dataclass(frozen=True)
class ReleasedPrompts:
    """The numbers of a released checkpoint in our layout: ctx (2, E, W) float32, deep (D-1, n_pos, W)
    float32 (float16-rounded), and what was read but not kept (`dropped`: key -> shape)."""

    ctx: torch.Tensor
    deep: torch.Tensor
    dropped: dict

    @property
    def settings(self) -> dict:
        return {"n_ctx": self.ctx.shape[1], "width": self.ctx.shape[2], "depth": self.deep.shape[0] + 1,
                "n_pos": self.deep.shape[1]}


@dataclass(frozen=True)
class PathHints:
    """What a released checkpoint's path says: class, dataset (ours), epoch, tapped layers, and the
    depth / n_ctx / t_n_ctx of its folder name; None where the path does not say."""

    class_name: str | None = None
    dataset: str | None = None
    epoch: int | None = None
    layers: tuple[int, ...] | None = None
    sizes: tuple[int, int, int] | None = None


def path_hints(path) -> PathHints:
    """Read `exps_<depth>_<n_ctx>_<t_n_ctx>_mv9_<data>_336_4/<class>/epoch_<N>.pth` (any parts present)."""
    path = Path(path)
    found = EPOCH_NAME.match(path.name)
    epoch = int(found.group(1)) if found else None
    experiment = EXPERIMENT_DIR.match(path.parent.parent.name) if path.parent.name else None
    if experiment is None:
        return PathHints(epoch=epoch)
    dataset, layers = RELEASED_DATA.get(experiment.group(4), (None, None))
    return PathHints(class_name=path.parent.name, dataset=dataset, epoch=epoch, layers=layers,
                     sizes=tuple(int(experiment.group(k)) for k in (1, 2, 3)))


def _tensor(state: dict, key: str, source: str, shape: tuple, integer: bool = False) -> torch.Tensor:
    """state[key] as a tensor of `shape` (None = any size there), float or int as asked, finite."""
    value = state.get(key)
    if not isinstance(value, torch.Tensor):
        raise CheckpointMismatchError(f"{source}: not a released PointAD prompt checkpoint ({key!r} is missing)")
    fits = value.dim() == len(shape) and all(s is None or s == n for s, n in zip(shape, value.shape))
    kind_ok = not value.is_floating_point() if integer else value.is_floating_point()
    if not fits or not kind_ok:
        wanted = tuple("*" if s is None else s for s in shape)
        raise CheckpointMismatchError(f"{source}: {key!r} is {tuple(value.shape)} {value.dtype}, a released "
                                      f"checkpoint has {wanted} {'int' if integer else 'float'}")
    if not integer and not bool(torch.isfinite(value).all()):
        raise CheckpointMismatchError(f"{source}: {key!r} holds nan or inf values")
    return value


def released_prompts(state: dict, source: str = "checkpoint") -> ReleasedPrompts:
    """The released state dict (module docstring) -> `ReleasedPrompts`; any other key, a missing one, a
    shape that disagrees or a template that is not the agnostic "object" one -> CheckpointMismatchError."""
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise CheckpointMismatchError(f"{source}: not a released PointAD prompt checkpoint ('{TOP_KEY}' is not a "
                                      "state dict)")
    normal = _tensor(state, "ctx_pos", source, (1, 1, None, None))
    n_ctx, width = normal.shape[2], normal.shape[3]
    anomalous = _tensor(state, "ctx_neg", source, (1, 1, n_ctx, width))
    deep_keys = sorted((k for k in state if k.startswith("compound_prompts_text.")),
                       key=lambda k: int(k.rsplit(".", 1)[1]) if k.rsplit(".", 1)[1].isdigit() else -1)
    expected_deep = [f"compound_prompts_text.{j}" for j in range(len(deep_keys))]
    if deep_keys != expected_deep:
        raise CheckpointMismatchError(f"{source}: deep prompts {deep_keys} are not numbered 0..{len(deep_keys) - 1}")
    first = _tensor(state, deep_keys[0], source, (None, width)) if deep_keys else None
    n_pos = first.shape[0] if first is not None else 1
    deep = [_tensor(state, key, source, (n_pos, width)) for key in deep_keys]
    dropped, known = {}, {"ctx_pos", "ctx_neg", *deep_keys}
    for j in range(len(deep_keys)):
        for part, shape in (("weight", (PROJECTION_WIDTH, width)), ("bias", (PROJECTION_WIDTH,))):
            key = f"compound_prompt_projections.{j}.{part}"
            if key in state:
                dropped[key] = tuple(_tensor(state, key, source, shape).shape)
                known.add(key)
    tokens = {}
    for side in ("pos", "neg"):
        for key, shape, integer in ((f"token_prefix_{side}", (1, 1, 1, width), False),
                                    (f"token_suffix_{side}", (1, 1, None, width), False),
                                    (f"tokenized_prompts_{side}", (1, 1, None), True)):
            if key in state:
                dropped[key] = tuple(_tensor(state, key, source, shape, integer).shape)
                known.add(key)
        if f"tokenized_prompts_{side}" in state:
            tokens[side] = state[f"tokenized_prompts_{side}"].reshape(-1)
    unknown = sorted(set(state) - known)
    if unknown:
        raise CheckpointMismatchError(f"{source}: not a released PointAD prompt checkpoint (unexpected "
                                      f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''})")
    if n_pos > n_ctx:
        raise CheckpointMismatchError(f"{source}: deep prompts of {n_pos} positions exceed the {n_ctx} learned words")
    _check_template(tokens, n_ctx, source)
    ctx = torch.stack([normal[0, 0], anomalous[0, 0]]).float()
    stacked = torch.stack(deep) if deep else torch.zeros(0, n_pos, width)
    return ReleasedPrompts(ctx=ctx, deep=stacked.half().float(), dropped=dropped)


def _check_template(tokens: dict, n_ctx: int, source: str) -> None:
    """The stored token ids after the learned words must read "object." and "damaged object." (the agnostic
    template: our `PromptLearner` builds the same text around its words)."""
    import open_clip
    for side, text in (("pos", "object."), ("neg", "damaged object.")):
        if side not in tokens:
            continue
        ids = tokens[side].long()
        ours = open_clip.tokenize([text], context_length=len(ids))[0]
        if not torch.equal(ids[1 + n_ctx:], ours[1:len(ids) - n_ctx]):
            raise CheckpointMismatchError(f"{source}: its prompts are not the agnostic \"[words] {text}\" template "
                                          f"this import reads")


def _text_shape(model: ModelConfig) -> tuple[int, int]:
    """(text width, text layers) of a model config, without building the model."""
    import open_clip
    config = model.open_clip_config or open_clip.get_model_config(model.open_clip_name)
    return int(config["text_cfg"]["width"]), int(config["text_cfg"]["layers"])


def read_released(path) -> ReleasedPrompts:
    """Read a released checkpoint file as data only (`torch.load(weights_only=True)`) -> `ReleasedPrompts`."""
    path = Path(path)
    payload = load_checkpoint_file(path, "released PointAD checkpoint")
    if isinstance(payload, dict) and payload.get("format") == "pointad-prompts":
        raise CheckpointMismatchError(f"{path}: already a checkpoint of this toolkit; use it (or its run "
                                      "directory) directly")
    if not isinstance(payload, dict) or set(payload) != {TOP_KEY}:
        keys = sorted(map(str, payload))[:5] if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointMismatchError(f"{path}: not a released PointAD prompt checkpoint (expected "
                                      f"{{'{TOP_KEY}': state dict}}, got {keys})")
    return released_prompts(payload[TOP_KEY], str(path))


@dataclass(frozen=True)
class ImportedRun:
    run_dir: Path
    checkpoint: Path
    train: dict
    prompts: ReleasedPrompts


def import_released(path, out, *, class_name: str | None = None, dataset: str | None = None,
                    model: str = "vit-l-14-336", layers=None, seed: int = TrainConfig.seed,
                    epoch: int | None = None) -> ImportedRun:
    """Write run directory `out` (config.json, checkpoints/epoch_<N>.pt) holding a released checkpoint's
    prompts, so `eval report --checkpoints out` scores with them like with any run.

    class_name, dataset, epoch, layers: given, else read from the path (`path_hints`; layers: the released
    script's tapped layers for that data, else the model's). `out` must be new or empty: nothing is
    overwritten."""
    path, out = Path(path), Path(out)
    hints = path_hints(path)
    prompts = read_released(path)
    if hints.sizes is not None:
        depth, n_ctx, n_pos = hints.sizes
        stored = prompts.settings
        if (stored["depth"], stored["n_ctx"], stored["n_pos"]) != (depth, n_ctx, n_pos):
            raise CheckpointMismatchError(f"{path}: its folder says depth {depth}, n_ctx {n_ctx}, t_n_ctx {n_pos}; its "
                                          f"tensors hold depth {stored['depth']}, n_ctx {stored['n_ctx']}, "
                                          f"t_n_ctx {stored['n_pos']}")
    class_name = class_name or hints.class_name
    dataset = dataset or hints.dataset
    if not class_name or not dataset:
        raise ConfigError(f"{path}: the path does not say the training {'class' if not class_name else 'dataset'} "
                          "(exps_*/<class>/epoch_N.pth); give --class and --dataset")
    model_config = load_model_config(model)
    layers = tuple(layers) if layers else hints.layers
    if layers:
        model_config = model_config.with_taps(layers)
    width, text_layers = _text_shape(model_config)
    settings = prompts.settings
    if settings["width"] != width or settings["depth"] > text_layers:
        raise CheckpointMismatchError(f"{path}: prompts of width {settings['width']} and depth {settings['depth']} do "
                                      f"not fit {model_config.label} (text width {width}, {text_layers} layers)")
    learner = PromptLearner(width, text_layers, n_ctx=settings["n_ctx"], depth=settings["depth"],
                            n_pos=settings["n_pos"])
    with torch.no_grad():
        learner.ctx.copy_(prompts.ctx)
        learner.deep.copy_(prompts.deep)
    epoch = epoch or hints.epoch or 1
    config = TrainConfig(store="", class_name=class_name, dataset=dataset, epochs=epoch, seed=seed,
                         model=model, layers=layers or None, prompt="agnostic")
    _check_new_folder(out)
    record = RunRecord(train=config, model=model_config, store_fingerprint="", rows=(), imported=ImportedFrom(
        file=str(path), sha256=_sha256(path), layout=f"released PointAD {{'{TOP_KEY}': state dict}}",
        deep_prompts="rounded to float16 as the released text encoder uses them", dropped=dict(prompts.dropped)))
    checkpoint = out / "checkpoints" / f"epoch_{epoch}.pt"
    with writer_lock(out, "train import-released"):
        _check_new_folder(out)
        save_checkpoint(checkpoint, epoch=epoch, prompts=learner.state_for_checkpoint(), optimizer=None,
                        config=config.identity(), model=model_config.to_dict(), store_fingerprint="",
                        metrics={})
        write_run_record(out, record)
    return ImportedRun(run_dir=out, checkpoint=checkpoint, train=config.identity(), prompts=prompts)


def _check_new_folder(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PointADError(f"{out}: already exists{'' if out.is_dir() else ' as a file'}; --out takes a new or "
                           "empty folder (nothing is overwritten)")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
