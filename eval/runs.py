"""Trained runs as the evaluation stage uses them: checkpoint -> frozen model + text features.

`eval report` (several runs; runs of one model share its backbone) and `pointad detect` (one run) both go through
`load_run`, so a checkpoint is turned into a scorer in one place. A run is given as a checkpoint file or
a run directory (its last checkpoint); `trained_runs_in` finds the run directories of a folder by their
records (`train/run_record.py`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..shared.errors import PointADError
from ..shared.names import printable
from ..train.model.backbone import load_backbone
from ..train.model.checkpoint import latest_checkpoint, load_checkpoint
from ..train.model.model_config import ModelConfig
from ..train.model.prompts import PromptLearner
from ..train.run_record import read_run_record


@dataclass(frozen=True)
class LoadedRun:
    """path: the checkpoint file; train: its TrainConfig as a dict; model: its ModelConfig as a dict;
    text: (2, D) features, or class name -> (2, D) for coop prompts (`prompt_features`)."""

    path: Path
    train: dict
    model: dict
    backbone: object
    text: object


def resolve_checkpoint(path) -> Path:
    """A checkpoint file as given, or a run directory's last checkpoint."""
    path = Path(path)
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise PointADError(f"{path}: no checkpoints/epoch_*.pt in this run directory; train it first")
        return found
    return path


def trained_runs_in(runs_dir) -> tuple[list[Path], str | None]:
    """Every run folder in `runs_dir` holding a checkpoint (sorted), and their one training dataset as their
    config.json records it; PointADError if the folder holds none, or runs of several datasets, and the record's
    own line if a run's config.json does not read."""
    runs = sorted(p for p in Path(runs_dir).iterdir() if p.is_dir() and latest_checkpoint(p) is not None)
    if not runs:
        raise PointADError(f"{runs_dir}: holds no trained run")
    datasets: dict[str | None, list[Path]] = {}
    for run in runs:
        datasets.setdefault(read_run_record(run).train.dataset, []).append(run)
    if len(datasets) != 1:
        listed = "; ".join(f"{printable(d)}: {', '.join(printable(r.name) for r in rs)}"
                           for d, rs in sorted(datasets.items(), key=str))
        raise PointADError(f"{runs_dir}: runs of several training datasets ({listed}); choose with --train-dataset")
    return runs, next(iter(datasets))


class BackboneCache:
    """Frozen models built on demand, each once, keyed by (model, seed): tiny runs of other seeds have other
    random weights; a real model ignores the seed, so all runs of one real model share one object."""

    def __init__(self, clip_weights=None, device="cpu"):
        self.clip_weights, self.device, self.built = clip_weights, device, {}

    def get(self, model: ModelConfig, seed: int):
        key = (json.dumps(model.to_dict(), sort_keys=True), seed if model.random_init else None)
        if key not in self.built:
            self.built[key] = load_backbone(model, self.clip_weights, seed=seed).to(self.device)
        return self.built[key]


def load_run(checkpoint, backbones: BackboneCache) -> LoadedRun:
    """Read a run's checkpoint and build its scorer (backbone from the cache, prompts on its device)."""
    path = resolve_checkpoint(checkpoint)
    payload = load_checkpoint(path)
    train = payload["config"]
    backbone = backbones.get(ModelConfig.from_dict(payload["model"], source=str(path)), int(train.get("seed", 0)))
    prompts = PromptLearner.from_state(payload["prompts"], source=str(path)).to(backbones.device)
    return LoadedRun(path=path, train=train, model=payload["model"], backbone=backbone,
                     text=prompt_features(prompts, backbone))


def prompt_features(prompts: PromptLearner, backbone):
    """(2, D) features of agnostic prompts; for coop, class name -> (2, D) (the learned words + that name)."""
    if prompts.variant != "coop":
        with torch.no_grad():
            return prompts(backbone)[0]
    cache = {}

    def features(name: str) -> torch.Tensor:
        if name not in cache:
            with torch.no_grad():
                cache[name] = prompts(backbone, [name])[0]
        return cache[name]
    return features
