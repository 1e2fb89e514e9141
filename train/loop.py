"""`train run`: learn the prompts of one auxiliary class from the render store (SPEC 6).

Per batch: text features from the prompt learner, view probabilities and patch maps from the
(frozen, usually cached) vision features, back-projection to the points, the hybrid loss, one Adam
step. Per epoch: a log line, a metrics.csv row and an atomic checkpoint; `resume` continues from
the last finished epoch and ends with the same parameters as an uninterrupted run.
Data parallel over samples with torch.distributed (torchrun): each rank takes a slice of every
global batch, and gradients are summed with weights so W ranks compute what one process would.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from shared.errors import ConfigError, PointADError
from shared.io import atomic_path
from shared.store import open_store, store_fingerprint
from train.backbone import FrozenCLIP, load_backbone
from train.checkpoint import check_compatible, latest_checkpoint, load_checkpoint, save_checkpoint
from train.data import StoreSamples, collate, epoch_batches, training_rows
from train.features import FeatureCache, compute_features, encode_views
from train.losses import hybrid_loss, parse_loss_terms
from train.maps import back_project, class_probabilities, patch_maps
from train.model_config import load_model_config
from train.prompts import PromptLearner

METRICS_FILE = "metrics.csv"


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """A training run. Everything here goes into every checkpoint; `resume` requires it unchanged
    except for `epochs` (a finished run may be extended)."""

    store: str
    class_name: str
    dataset: str | None = None
    epochs: int = 15
    batch_size: int = 4
    lr: float = 1e-3
    betas: tuple[float, float] = (0.5, 0.999)
    seed: int = 111
    model: str = "vit-l-14-336"
    layers: tuple[int, ...] | None = None      # tapped layers; None = the model config's default
    dpam_start: int | None = None              # DPAM in blocks dpam_start..last (0 = off); None = default
    prompt: str = "agnostic"                   # agnostic (PointAD) | coop (PointAD-CoOp)
    loss_terms: str = "all"
    feature_cache: bool = True

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError("epochs and batch size must be >= 1 and the learning rate > 0")
        if self.prompt not in ("agnostic", "coop"):
            raise ConfigError(f"--prompt must be agnostic or coop, got {self.prompt!r}")
        try:
            parse_loss_terms(self.loss_terms)
        except ValueError as exc:
            raise ConfigError(f"--loss-terms: {exc}") from None

    def identity(self) -> dict:
        """The settings a checkpoint must share with a run that resumes from it."""
        data = asdict(self)
        data.pop("epochs")
        data["betas"] = list(self.betas)
        data["layers"] = None if self.layers is None else list(self.layers)
        return data


@dataclass
class TrainResult:
    run_dir: Path
    epochs_run: list[int] = field(default_factory=list)
    metrics: list[dict] = field(default_factory=list)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)


class Trainer:
    """Holds the frozen backbone, the prompt learner, the optimizer and the data of one run."""

    def __init__(self, config: TrainConfig, run_dir: Path, *, device="cpu", clip_weights=None,
                 backbone: FrozenCLIP | None = None, feature_path: Path | None = None, progress=None,
                 loader_workers: int = 0):
        self.config, self.run_dir, self.device = config, Path(run_dir), torch.device(device)
        self.loader_workers = loader_workers
        self.rank, self.world = _world()
        self.store = store = open_store(config.store)
        self.store_fingerprint = store_fingerprint(config.store)
        self.rows = training_rows(store, config.dataset, config.class_name)
        model_config = load_model_config(config.model)
        if config.layers is not None:
            model_config = model_config.with_taps(config.layers)
        if config.dpam_start is not None:
            last = (model_config.dual_path_blocks or model_config.tap_layers)[-1]  # the dual path ends at the top
            model_config = model_config.with_dual_path(range(config.dpam_start, last + 1) if config.dpam_start else ())
        self.backbone = backbone or load_backbone(model_config, clip_weights, seed=config.seed)
        self.backbone.to(self.device)
        self.image_size = store.attrs.image_size
        self.prompts = PromptLearner.for_backbone(
            self.backbone, variant=config.prompt, seed=config.seed,
            class_names=[config.class_name] if config.prompt == "coop" else ()).to(self.device)
        self.optimizer = torch.optim.Adam([p for p in self.prompts.parameters() if p.requires_grad],
                                          lr=config.lr, betas=config.betas)
        self.terms = parse_loss_terms(config.loss_terms)
        self.samples = StoreSamples(config.store, self.rows)
        self.autocast = self.device.type == "cuda"
        self.features = None
        if config.feature_cache:
            path = Path(feature_path) if feature_path else self.run_dir / "features.zarr"
            if self.rank == 0 and not self._cache_usable(path):
                compute_features(self.backbone, config.store, self.rows, path, device=self.device,
                                 batch_size=config.batch_size, autocast=self.autocast,
                                 dtype="float16" if self.autocast else "float32", progress=progress)
            if self.world > 1:
                dist.barrier()
            self.features = FeatureCache(path, self.backbone, config.store, device=self.device)

    def _cache_usable(self, path: Path) -> bool:
        if not path.exists():
            return False
        try:
            return FeatureCache(path, self.backbone, self.config.store).covers(self.rows)
        except PointADError:
            return False

    def model_identity(self) -> dict:
        return self.backbone.config.to_dict()

    def _vision(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        rows = batch["row"].tolist()
        if self.features is not None:
            return self.features.get(rows, self.device)
        images = self.store.read_batch(rows, ("image",))["image"]
        return encode_views(self.backbone, images, self.device, self.autocast)

    def batch_loss(self, batch: dict) -> tuple[torch.Tensor, dict, torch.Tensor]:
        """(total loss, {term: value}, anomalous point scores (B, P)) of one batch."""
        batch = {k: v.to(self.device) for k, v in batch.items()}
        global_feature, patches = self._vision(batch)
        b, v = global_feature.shape[:2]
        text = self.prompts(self.backbone)[0]                          # (2, D): one class or agnostic
        view_probs = class_probabilities(text, global_feature)          # (B, V, 2)
        maps2d = patch_maps(text, patches, self.image_size).reshape(b, v, 2, self.image_size, self.image_size)
        point_maps = back_project(maps2d, batch["pixel"], batch["visible"], batch["valid"], batch["proxy"])
        total, parts = hybrid_loss(self.terms, view_probs=view_probs, labels=batch["sample_label"],
                                   point_maps=point_maps, point_labels=batch["label"], valid=batch["valid"],
                                   maps2d=maps2d, view_masks=batch["mask"])
        return total, parts, point_maps[:, 1]

    def _load(self, batches: list[np.ndarray]):
        """Iterator over the collated non-empty batches, read by DataLoader workers when asked for."""
        parts = [[int(i) for i in part] for part in batches if len(part)]
        if self.loader_workers == 0:
            return (collate([self.samples[i] for i in part]) for part in parts)
        loader = torch.utils.data.DataLoader(self.samples, batch_sampler=parts, collate_fn=collate,
                                             num_workers=self.loader_workers,
                                             pin_memory=self.device.type == "cuda")
        return iter(loader)

    def run_epoch(self, epoch: int, progress=None) -> dict:
        """One epoch; returns its metrics (mean loss per term, point AUROC of the class, seconds)."""
        started = time.perf_counter()
        sums: dict[str, float] = {}
        scores, labels = [], []
        batches = epoch_batches(len(self.rows), self.config.batch_size, self.config.seed, epoch, self.rank, self.world)
        global_sizes = [len(b) for b in epoch_batches(len(self.rows), self.config.batch_size, self.config.seed, epoch)]
        loaded = self._load(batches)
        for part, global_size in zip(batches, global_sizes):
            self.optimizer.zero_grad(set_to_none=False)
            if len(part):
                batch = next(loaded)
                total, parts, point_scores = self.batch_loss(batch)
                # weight by this rank's share of the global batch, then sum across ranks
                (total * (len(part) / global_size)).backward()
                for name, value in {"total": total, **parts}.items():
                    sums[name] = sums.get(name, 0.0) + float(value.detach()) * len(part)
                valid = batch["valid"].bool()
                scores.append(point_scores.detach()[valid.to(self.device)].cpu().numpy())
                labels.append(batch["label"][valid].numpy())
            if self.world > 1:
                for parameter in self.prompts.parameters():
                    if parameter.grad is not None:
                        dist.all_reduce(parameter.grad, op=dist.ReduceOp.SUM)
            self.optimizer.step()
            if progress is not None:
                progress.update(len(part))
        metrics = {name: value / max(len(self.rows) / self.world, 1) for name, value in sums.items()}
        metrics["point_auroc"] = _auroc(np.concatenate(labels), np.concatenate(scores)) if scores else float("nan")
        metrics["seconds"] = time.perf_counter() - started
        return metrics

    def evaluate(self) -> dict:
        """Mean losses and point AUROC over the training rows with the current prompts (no update)."""
        sums: dict[str, float] = {}
        scores, labels = [], []
        with torch.no_grad():
            for part in epoch_batches(len(self.rows), self.config.batch_size, self.config.seed, 0):
                batch = collate([self.samples[int(i)] for i in part])
                total, parts, point_scores = self.batch_loss(batch)
                for name, value in {"total": total, **parts}.items():
                    sums[name] = sums.get(name, 0.0) + float(value) * len(part)
                valid = batch["valid"].bool()
                scores.append(point_scores[valid.to(self.device)].cpu().numpy())
                labels.append(batch["label"][valid].numpy())
        metrics = {name: value / len(self.rows) for name, value in sums.items()}
        metrics["point_auroc"] = _auroc(np.concatenate(labels), np.concatenate(scores))
        return metrics

    def checkpoint(self, epoch: int, metrics: dict) -> Path:
        path = self.run_dir / "checkpoints" / f"epoch_{epoch}.pt"
        save_checkpoint(path, epoch=epoch, prompts=self.prompts.state_for_checkpoint(),
                        optimizer=self.optimizer.state_dict(), config=self.config.identity(),
                        model=self.model_identity(), store_fingerprint=self.store_fingerprint, metrics=metrics)
        return path

    def restore(self, path: Path) -> int:
        """Load a checkpoint of this run; returns its epoch."""
        payload = load_checkpoint(path)
        check_compatible(path, payload, model=self.model_identity(), config=self.config.identity(),
                         store_fingerprint=self.store_fingerprint)
        self.prompts.load_state(payload["prompts"])
        self.optimizer.load_state_dict(payload["optimizer"])
        return int(payload["epoch"])


def _auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score
    return float(roc_auc_score(labels, scores)) if 0 < labels.sum() < len(labels) else float("nan")


def _append_metrics(path: Path, row: dict) -> None:
    """Append one epoch to metrics.csv (rewritten atomically so a kill never leaves half a line)."""
    rows = []
    if path.exists():
        with open(path, newline="") as handle:
            rows = [r for r in csv.DictReader(handle) if int(r["epoch"]) < row["epoch"]]
    rows.append({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    names = list(rows[-1])
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=names, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def train(config: TrainConfig, run_dir: Path, *, device="cpu", clip_weights=None, resume: bool = False,
          log=None, progress_factory=None, backbone=None, feature_path=None, loader_workers: int = 0) -> TrainResult:
    """Run (or resume) training; writes config.json, metrics.csv and checkpoints/epoch_N.pt in run_dir.

    log: callable taking one line per epoch; progress_factory(total, desc) -> tqdm-like bar or None.
    """
    run_dir = Path(run_dir)
    rank, _ = _world()
    start = 1
    latest = latest_checkpoint(run_dir)
    if latest is not None and not resume:
        raise PointADError(f"{run_dir}: already holds checkpoints; pass --resume to continue or choose another --out")
    bar = progress_factory(None, "features") if progress_factory and rank == 0 and config.feature_cache else None
    trainer = Trainer(config, run_dir, device=device, clip_weights=clip_weights, backbone=backbone,
                      feature_path=feature_path, progress=bar, loader_workers=loader_workers)
    if bar is not None:
        bar.close()
    if resume and latest is not None:
        start = trainer.restore(latest) + 1
    if rank == 0:
        with atomic_path(run_dir / "config.json") as tmp:
            tmp.write_text(json.dumps({"train": config.identity() | {"epochs": config.epochs},
                                       "model": trainer.model_identity(), "store_fingerprint":
                                       trainer.store_fingerprint, "rows": trainer.rows.tolist()}, indent=2))
    result = TrainResult(run_dir=run_dir)
    for epoch in range(start, config.epochs + 1):
        bar = progress_factory(len(trainer.rows), f"epoch {epoch}/{config.epochs}") if progress_factory else None
        metrics = trainer.run_epoch(epoch, progress=bar)
        if bar is not None:
            bar.close()
        if rank == 0:
            trainer.checkpoint(epoch, metrics)
            _append_metrics(run_dir / METRICS_FILE, {"epoch": epoch, **metrics})
            if log is not None:
                log(f"epoch {epoch}/{config.epochs} " + " ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        result.epochs_run.append(epoch)
        result.metrics.append(metrics)
    return result
