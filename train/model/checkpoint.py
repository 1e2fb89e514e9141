"""Checkpoints: prompt parameters + optimizer + full run config + store fingerprint + model (design §6, §8), and
the store's render options (`RenderRecord.drawn` of the trained class: `detect` renders a new cloud as the training
rows were).

Written atomically (temp file, then rename), read with `torch.load(weights_only=True)`. Loading one
made for another model or configuration is a `CheckpointMismatchError`, never a shape traceback.

`load_checkpoint` checks a file completely before anything is built from it (design §8): the data as
`torch_files.check_data` does (dense CPU tensors, bounded nesting and size), the model config as
`ModelConfig.from_dict` does (its architecture bounded), and the prompts against both: their settings
must be the shapes of their own float32 tensors, which must fit the model's text tower and be finite. So a
checkpoint claiming prompts of width 10^9 is one line, not a 96 GB allocation.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ...shared.errors import CheckpointMismatchError, ConfigError
from ...shared.io import atomic_path
from .model_config import ModelConfig
from .prompts import STATE_FORMAT, STATE_VERSION, VARIANTS
from .torch_files import load_checkpoint_file

CHECKPOINT_FORMAT = "pointad-prompts"
CHECKPOINT_VERSION = 1
EPOCH_FILE = re.compile(r"epoch_(\d+)\.pt$")
# coop prompts name their classes: at most this many, each at most this long (a prompt is 77 tokens)
MAX_CLASS_NAMES, MAX_NAME_LENGTH = 10_000, 1_000
# keys of the run config that evaluation reads, and their types (train/options.py TrainConfig.identity)
CONFIG_TYPES = {"seed": int, "class_name": str, "dataset": (str, type(None))}
# open_clip's CLIPTextCfg defaults, for an architecture that leaves a key out
TEXT_DEFAULTS = {"width": 512, "layers": 12, "context_length": 77}


def save_checkpoint(path: Path, *, epoch: int, prompts: dict, optimizer: dict | None, config: dict,
                    model: dict, store_fingerprint: str, metrics: dict, render: dict | None = None) -> None:
    """Write one checkpoint atomically. render: the store's `RenderRecord.drawn` for the training rows (None: not known;
    checkpoints written before it was recorded have no "render" at all)."""
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "epoch": epoch, "prompts": prompts,
               "optimizer": optimizer, "config": config, "model": model, "store_fingerprint": store_fingerprint,
               "metrics": metrics, "render": render}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint as data only (nothing in it is run); a file that is not one of ours, or whose
    contents do not fit together (see the module docstring), is an error naming it and saying plainly why."""
    path = Path(path)
    payload = load_checkpoint_file(path, "pointad checkpoint")
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointMismatchError(f"{path}: not a pointad prompt checkpoint")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise CheckpointMismatchError(f"{path}: checkpoint version {_short(payload.get('version'))}, this code "
                                      f"reads {CHECKPOINT_VERSION}")
    for key, kind in (("epoch", int), ("prompts", dict), ("config", dict), ("model", dict)):
        if not isinstance(payload.get(key), kind) or isinstance(payload.get(key), bool):
            raise CheckpointMismatchError(f"{path}: damaged pointad checkpoint ({key!r} is missing or not "
                                          f"{kind.__name__})")
    for key, kinds in (("store_fingerprint", str), ("optimizer", (dict, type(None))), ("metrics", dict),
                       ("render", (dict, type(None)))):
        if key in payload and not isinstance(payload[key], kinds):
            _damaged(path, f"{key!r} is {_short(payload[key])}")
    for key, kinds in CONFIG_TYPES.items():
        value = payload["config"].get(key)
        if key in payload["config"] and (not isinstance(value, kinds) or isinstance(value, bool)):
            _damaged(path, f"config {key!r} is {_short(value)}")
    model = _model_config(path, payload["model"])
    check_prompt_state(path, payload["prompts"], model)
    for where, tensor in _tensors(payload, ""):
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            _damaged(path, f"{where} holds NaN or infinite values")
    return payload


def _damaged(path: Path, reason: str):
    raise CheckpointMismatchError(f"{path}: damaged pointad checkpoint ({reason})")


def _short(value) -> str:
    text = repr(value) if isinstance(value, (int, float, str, type(None))) else type(value).__name__
    return text if len(text) <= 60 else text[:57] + "..."


def _model_config(path: Path, data: dict) -> ModelConfig:
    """The checkpoint's model config, parsed and bounded as any model config is."""
    try:
        return ModelConfig.from_dict(data, source=f"{path}: model config")
    except ConfigError as exc:  # the class's own checks name the config, not the file
        text = str(exc)
        raise CheckpointMismatchError(text if text.startswith(f"{path}: ") else f"{path}: {text}") from None


def text_shape(path: Path, model: ModelConfig) -> tuple[int, int, int]:
    """(width, layers, context length) of the model's text tower, read from its architecture without
    building it: the config's own `open_clip_config`, or open_clip's config of that name (whose towers must
    both be mappings)."""
    arch = model.open_clip_config
    if arch is None:
        import open_clip  # public API only: the architecture table
        arch = open_clip.get_model_config(model.open_clip_name)
        if arch is None:
            raise CheckpointMismatchError(f"{path}: its model is open_clip architecture {model.open_clip_name!r}, "
                                          "which this open_clip does not have")
    for tower in ("vision_cfg", "text_cfg"):  # open_clip builds each tower from its mapping
        if not isinstance(arch.get(tower), dict):
            _damaged(path, f"model config 'open_clip_config.{tower}' is {_short(arch.get(tower))}, not a mapping")
    text = arch["text_cfg"]
    shape = []
    for key, default in TEXT_DEFAULTS.items():
        value = text.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            _damaged(path, f"model config 'open_clip_config.text_cfg.{key}' is {_short(value)}")
        shape.append(value)
    return tuple(shape)


def check_prompt_state(path: Path, state: dict, model: ModelConfig) -> None:
    """CheckpointMismatchError naming the file unless `state` (PromptLearner.state_for_checkpoint) has settings
    of the right types, float32 tensors `ctx` (2, n_ctx, width) and `deep` (depth - 1, n_pos, width), and
    fits `model`'s text tower: width its width, depth at most its layers, the learnable words and the
    template's start and end tokens within its context. Nothing is allocated from the settings."""
    if state.get("format") != STATE_FORMAT or state.get("version") != STATE_VERSION:
        _damaged(path, f"'prompts' is not a prompt state of version {STATE_VERSION}")
    if state.get("variant") not in VARIANTS:
        _damaged(path, f"prompt variant {_short(state.get('variant'))}; known: {', '.join(VARIANTS)}")
    sizes = {}
    for key in ("n_ctx", "depth", "n_pos", "width"):
        value = state.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            _damaged(path, f"prompt setting {key!r} is {_short(value)}")
        sizes[key] = value
    names = state.get("class_names")
    if not isinstance(names, (list, tuple)) or len(names) > MAX_CLASS_NAMES or \
            not all(isinstance(n, str) and len(n) <= MAX_NAME_LENGTH for n in names):
        _damaged(path, f"prompt class_names must be a list of at most {MAX_CLASS_NAMES} names")
    n_ctx, depth, n_pos, width = sizes["n_ctx"], sizes["depth"], sizes["n_pos"], sizes["width"]
    for name, shape in (("ctx", (2, n_ctx, width)), ("deep", (depth - 1, n_pos, width))):
        tensor = state.get(name)
        if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != shape or tensor.dtype != torch.float32:
            got = f"{tuple(tensor.shape)} {tensor.dtype}" if isinstance(tensor, torch.Tensor) else _short(tensor)
            _damaged(path, f"prompts.{name} is {got}, its settings say {shape} torch.float32")
    text_width, text_layers, context = text_shape(path, model)
    if width != text_width:
        raise CheckpointMismatchError(f"{path}: prompts of width {width} do not fit its model {model.label} "
                                      f"(text width {text_width})")
    if depth > text_layers:
        raise CheckpointMismatchError(f"{path}: prompts of depth {depth} do not fit its model {model.label} "
                                      f"({text_layers} text layers)")
    if n_pos > n_ctx or n_ctx + 2 > context:
        raise CheckpointMismatchError(f"{path}: prompts of {n_ctx} learnable words ({n_pos} deep positions) do not "
                                      f"fit its model's {context}-token context")


def _tensors(value, where: str):
    """(key path, tensor) of every tensor in a checked payload (nesting bounded by torch_files.check_data)."""
    if isinstance(value, torch.Tensor):
        yield where, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _tensors(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _tensors(item, f"{where}[{i}]")


def check_compatible(path: Path, payload: dict, *, model: dict, config: dict | None = None,
                     store_fingerprint: str | None = None) -> None:
    """Refuse a checkpoint made for another model, another run configuration or another store."""
    if payload["model"] != model:
        raise CheckpointMismatchError(f"{path}: made for model {payload['model'].get('label', payload['model'])}, "
                                      f"not {model.get('label', model)}")
    if config is not None:
        differing = sorted(k for k in set(config) | set(payload["config"]) if config.get(k) != payload["config"].get(k))
        if differing:
            raise CheckpointMismatchError(f"{path}: made with other settings ({', '.join(differing)}); "
                                          "use the same options or another --out")
    if store_fingerprint is not None and payload.get("store_fingerprint") != store_fingerprint:
        raise CheckpointMismatchError(f"{path}: made from another store (fingerprint differs)")


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint of the highest finished epoch in a run directory, if any."""
    found = [(int(m.group(1)), p) for p in Path(run_dir).glob("checkpoints/epoch_*.pt")
             if (m := EPOCH_FILE.search(p.name))]
    return max(found)[1] if found else None
