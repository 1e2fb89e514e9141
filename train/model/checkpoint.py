"""Checkpoints: prompt parameters + optimizer + full run config + store fingerprint + model (design §6, §8), and
the store's render options (`store_render_record`: `detect` renders a new cloud as the training rows were).

Written atomically (temp file, then rename), read with `torch.load(weights_only=True)`. Loading one
made for another model or configuration is a `CheckpointMismatchError`, never a shape traceback.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from pointad.shared.errors import CheckpointMismatchError
from pointad.shared.io import atomic_path
from pointad.train.model.torch_files import load_checkpoint_file

CHECKPOINT_FORMAT = "pointad-prompts"
CHECKPOINT_VERSION = 1
EPOCH_FILE = re.compile(r"epoch_(\d+)\.pt$")


def save_checkpoint(path: Path, *, epoch: int, prompts: dict, optimizer: dict | None, config: dict,
                    model: dict, store_fingerprint: str, metrics: dict, render: dict | None = None) -> None:
    """Write one checkpoint atomically. render: `store_render_record` of the training rows (None: not known;
    checkpoints written before it was recorded have no "render" at all)."""
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "epoch": epoch, "prompts": prompts,
               "optimizer": optimizer, "config": config, "model": model, "store_fingerprint": store_fingerprint,
               "metrics": metrics, "render": render}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def store_render_record(render: dict, dataset: str, class_name: str) -> dict:
    """The store's render options (`StoreAttrs.render`) as the rows of `dataset`/`class_name` were drawn: the
    per-class point sizes a build records (`point_sizes`, "dataset/class" -> size) resolved to the class's
    `point_size`, everything else as the store recorded it (JSON-ready: plain values)."""
    record = {k: v for k, v in render.items() if k != "point_sizes"}
    sizes = render.get("point_sizes") or {}
    if f"{dataset}/{class_name}" in sizes:
        record["point_size"] = sizes[f"{dataset}/{class_name}"]
    return record


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint as data only (nothing in it is run); a file that is not one of ours is an error
    naming it and saying plainly why."""
    path = Path(path)
    payload = load_checkpoint_file(path, "pointad checkpoint")
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointMismatchError(f"{path}: not a pointad prompt checkpoint")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise CheckpointMismatchError(f"{path}: checkpoint version {payload.get('version')}, this code reads "
                                      f"{CHECKPOINT_VERSION}")
    for key, kind in (("epoch", int), ("prompts", dict), ("config", dict), ("model", dict)):
        if not isinstance(payload.get(key), kind):
            raise CheckpointMismatchError(f"{path}: damaged pointad checkpoint ({key!r} is missing or not "
                                          f"{kind.__name__})")
    return payload


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
    if store_fingerprint is not None and payload["store_fingerprint"] != store_fingerprint:
        raise CheckpointMismatchError(f"{path}: made from another store (fingerprint differs)")


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint of the highest finished epoch in a run directory, if any."""
    found = [(int(m.group(1)), p) for p in Path(run_dir).glob("checkpoints/epoch_*.pt")
             if (m := EPOCH_FILE.search(p.name))]
    return max(found)[1] if found else None
