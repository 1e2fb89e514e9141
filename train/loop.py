"""`train run`: learn the prompts of one auxiliary class from the render store (design §6).

Per batch: text features from the prompt learner, view probabilities and patch maps from the
(frozen, usually cached) vision features, back-projection to the points, the hybrid loss, one Adam
step. Per epoch: a log line, a metrics.csv row and an atomic checkpoint; `resume` continues from
the last finished epoch and ends with the same parameters as an uninterrupted run.
Data parallel over samples with torch.distributed (torchrun): each rank takes a slice of every
global batch, and gradients are summed with weights so W ranks compute what one process would.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ..shared.errors import CheckpointMismatchError, ConfigError, PointADError
from ..shared.limits import check_value
from ..shared.lock import writer_lock
from ..shared.store import open_store, store_fingerprint
from .data import StoreSamples, collate, epoch_batches, training_rows
from .features import FeatureCache, cache_identity, compute_features
from .losses import hybrid_loss, parse_loss_terms
from .model.backbone import FrozenCLIP, encode_views, load_backbone
from .model.checkpoint import check_compatible, latest_checkpoint, load_checkpoint, save_checkpoint
from .model.maps import back_project, class_probabilities, patch_maps
from .model.model_config import check_image_size, model_config_for
from .model.prompts import PromptLearner
from .options import LOADER_WORKERS, TrainConfig
from .run_record import (
    CONFIG_FILE,
    METRICS_FILE,
    EpochMetrics,
    RunRecord,
    append_metrics,
    check_run_dir,
    read_metrics,
    write_run_record,
)


class DivergedError(PointADError):
    """The training loss or the prompts became NaN or infinite: the epoch is not recorded, no checkpoint written."""


@dataclass
class TrainResult:
    run_dir: Path
    epochs_run: list[int] = field(default_factory=list)
    metrics: list[dict] = field(default_factory=list)


def _world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)


class Trainer:
    """Holds the frozen backbone, the prompt learner, the optimizer and the data of one run."""

    def __init__(self, config: TrainConfig, run_dir: Path, *, device="cpu", clip_weights=None,
                 backbone: FrozenCLIP | None = None, feature_path: Path | None = None, progress=None,
                 loader_workers: int = 0, rebuild_features: bool = False, log=None):
        """rebuild_features: replace a feature cache made for another model, weights, taps or store (else
        refused); log: callable taking one line (what was done with the feature cache)."""
        self.config, self.run_dir, self.device = config, Path(run_dir), torch.device(device)
        self.loader_workers = loader_workers
        self.rank, self.world = _world()
        self.store = store = open_store(config.store)
        self.store_fingerprint = store_fingerprint(config.store)
        self.rows = training_rows(store, config.dataset, config.class_name)
        model_config = model_config_for(config.model, config.layers, config.dpam_start)
        check_image_size(model_config, store.attrs.image_size, config.store)
        self.backbone = backbone or load_backbone(model_config, clip_weights, seed=config.seed)
        self.backbone.to(self.device)
        self.image_size = store.attrs.image_size
        self.prompts = PromptLearner.for_backbone(
            self.backbone, variant=config.prompt, seed=config.seed,
            class_names=[config.class_name] if config.prompt == "coop" else ()).to(self.device)
        self.optimizer = torch.optim.Adam([p for p in self.prompts.parameters() if p.requires_grad],
                                          lr=config.lr, betas=config.betas)
        self.terms = parse_loss_terms(config.loss_terms)
        self.samples = StoreSamples(config.store, self.rows, memory_limit=config.cache_memory)
        self.autocast = self.device.type == "cuda"
        self.features = None
        if config.feature_cache:
            path = Path(feature_path) if feature_path else self.run_dir / "features.zarr"
            if path.absolute() == self.run_dir.absolute():
                raise ConfigError(f"{path}: --features must not be the run directory (--out)")
            identity = cache_identity(self.backbone, config.store)
            if self.rank == 0:
                done = compute_features(self.backbone, config.store, self.rows, path, identity=identity,
                                        rebuild=rebuild_features, device=self.device, batch_size=config.batch_size,
                                        autocast=self.autocast, dtype="float16" if self.autocast else "float32",
                                        progress=progress)
                if log is not None:
                    log(f"{path}: feature cache {done}")
            if self.world > 1:
                dist.barrier()
            self.features = FeatureCache(path, identity, device=self.device, memory_limit=config.cache_memory)
            self.samples.memory_limit = config.cache_memory - self.features.nbytes  # one budget for both

    def model_identity(self) -> dict:
        return self.backbone.config.to_dict()

    def render_record(self) -> dict:
        """The store's render options the training rows were drawn with (`detect` renders a cloud the same way)."""
        first = self.store.identity(int(self.rows[0]))
        return self.store.attrs.render.drawn(first["dataset"], first["class_name"])

    def run_record(self) -> RunRecord:
        """The run folder's config.json: this run's settings, model, store and rows."""
        return RunRecord(train=self.config, model=self.backbone.config, store_fingerprint=self.store_fingerprint,
                         rows=tuple(int(r) for r in self.rows), render=self.render_record())

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
        """One epoch; returns its metrics (mean loss per term, point AUROC of the class, seconds).

        Under torchrun the metrics are global, the same on every rank and equal to one process's: the loss
        sums are reduced across ranks and the AUROC is computed over every rank's point scores.
        """
        started = time.perf_counter()
        names = ["total", *self.terms.names()]
        sums = torch.zeros(len(names), dtype=torch.float64)
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
                values = {"total": total, **parts}
                sums += torch.tensor([float(values[name].detach()) for name in names], dtype=torch.float64) * len(part)
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
        scores = np.concatenate(scores).astype(np.float32) if scores else np.zeros(0, np.float32)
        labels = np.concatenate(labels).astype(np.int64) if labels else np.zeros(0, np.int64)
        if self.world > 1:
            sums = self._all_reduce(sums)
        self._check_finite(epoch, dict(zip(names, sums.tolist())))  # same sums and prompts on every rank
        if self.world > 1:
            scores, labels = self._all_gather(scores), self._all_gather(labels)
        metrics = {name: float(value) / len(self.rows) for name, value in zip(names, sums.tolist())}
        metrics["point_auroc"] = _auroc(labels, scores)
        metrics["seconds"] = time.perf_counter() - started
        return metrics

    def _check_finite(self, epoch: int, sums: dict) -> None:
        """DivergedError naming the epoch when a loss term or a prompt value is NaN or infinite (a learning rate
        too large): stopped before the epoch's metrics row and checkpoint, which would only hold NaN."""
        bad = [name for name, value in sums.items() if not math.isfinite(value)]
        if not bad and all(bool(torch.isfinite(p).all()) for p in self.prompts.parameters()):
            return
        what = f"the loss ({', '.join(bad)}) is {sums[bad[0]]}" if bad else "the prompts hold NaN or inf"
        kept = f"checkpoints up to epoch {epoch - 1} are kept" if epoch > 1 else "no checkpoint was written"
        raise DivergedError(f"{self.run_dir}: epoch {epoch}: training diverged, {what}; {kept}. Lower --lr "
                            f"(this run: {self.config.lr:g}) and train again with another --out")

    def _all_reduce(self, values: torch.Tensor) -> torch.Tensor:
        """The sum over ranks of a CPU tensor (moved to this rank's device for NCCL, returned on the CPU)."""
        values = values.to(self.device)
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values.cpu()

    def _all_gather(self, values: np.ndarray) -> np.ndarray:
        """Every rank's 1-D array, concatenated in rank order (lengths differ: padded to the longest, then cut)."""
        local = torch.from_numpy(np.ascontiguousarray(values)).to(self.device)
        size = torch.tensor([local.numel()], device=self.device)
        sizes = [torch.zeros_like(size) for _ in range(self.world)]
        dist.all_gather(sizes, size)
        longest = int(max(sizes).item())
        padded = torch.zeros(longest, dtype=local.dtype, device=self.device)
        padded[:local.numel()] = local
        gathered = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(gathered, padded)
        return np.concatenate([part[:int(n.item())].cpu().numpy() for part, n in zip(gathered, sizes)])

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
                        model=self.model_identity(), store_fingerprint=self.store_fingerprint, metrics=metrics,
                        render=self.render_record())
        return path

    def restore(self, path: Path) -> int:
        """Load a checkpoint of this run; returns its epoch."""
        payload = load_checkpoint(path)
        if isinstance(payload.get("config"), dict):
            payload["config"].pop("store", None)  # older checkpoints recorded the path; the fingerprint decides
        check_compatible(path, payload, model=self.model_identity(), config=self.config.identity(),
                         store_fingerprint=self.store_fingerprint)
        self.prompts.load_state(payload["prompts"])
        check_optimizer_state(path, payload)
        try:
            self.optimizer.load_state_dict(payload["optimizer"])
        except (ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise CheckpointMismatchError(f"{path}: damaged optimizer state ({exc}); {_RESUME_FROM_EARLIER}") from None
        return int(payload["epoch"])


_RESUME_FROM_EARLIER = "delete this checkpoint to resume from the one before, or train again with another --out"


def check_optimizer_state(path: Path, payload: dict) -> None:
    """CheckpointMismatchError naming `path` unless the checkpoint's prompts are finite and its Adam state fits
    them: param groups with finite hyperparameters over the prompt tensors (ctx, deep, in order), and per
    tensor a finite step count and moment estimates of its shape. Checked when resuming, before any work:
    a damaged state would otherwise fail at the first optimizer step, or poison every epoch after it."""
    def refuse(reason):
        raise CheckpointMismatchError(f"{path}: damaged optimizer state ({reason}); {_RESUME_FROM_EARLIER}")
    prompts = payload.get("prompts") or {}
    shapes = []
    for key in ("ctx", "deep"):
        tensor = prompts.get(key)
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            raise CheckpointMismatchError(f"{path}: prompt state {key!r} is not a float tensor; {_RESUME_FROM_EARLIER}")
        if not bool(torch.isfinite(tensor).all()):
            raise CheckpointMismatchError(f"{path}: prompt state {key!r} holds NaN or inf (a diverged run); "
                                          f"{_RESUME_FROM_EARLIER}")
        shapes.append(tuple(tensor.shape))
    optimizer = payload.get("optimizer")
    if not isinstance(optimizer, dict) or not isinstance(optimizer.get("state"), dict) \
            or not isinstance(optimizer.get("param_groups"), list):
        refuse("not a mapping of 'state' and 'param_groups'")
    ids = []
    for group in optimizer["param_groups"]:
        if not isinstance(group, dict) or not isinstance(group.get("params"), list):
            refuse("a param group without a 'params' list")
        ids += group["params"]
        for key in ("lr", "eps", "weight_decay"):
            if key in group and not _finite_number(group[key]):
                refuse(f"{key} {group[key]!r}")
        betas = group.get("betas", (0.9, 0.999))
        if not isinstance(betas, (tuple, list)) or len(betas) != 2 or not all(_finite_number(b) for b in betas):
            refuse(f"betas {betas!r}")
    if sorted(ids, key=str) != list(range(len(shapes))):
        refuse(f"parameters {ids}, the prompts have {len(shapes)}")
    for index, state in optimizer["state"].items():
        if index not in ids or not isinstance(state, dict):
            refuse(f"state of unknown parameter {index!r}")
        step = state.get("step")
        if isinstance(step, torch.Tensor):
            step = step.item() if step.numel() == 1 else None
        if not _finite_number(step) or step < 0:
            refuse(f"parameter {index}: step {state.get('step')!r}")
        for key in ("exp_avg", "exp_avg_sq"):
            moment = state.get(key)
            if not isinstance(moment, torch.Tensor) or tuple(moment.shape) != shapes[index]:
                refuse(f"parameter {index}: {key} is not a tensor of shape {list(shapes[index])}")
            if not bool(torch.isfinite(moment).all()):
                refuse(f"parameter {index}: {key} holds NaN or inf")


def _finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score
    return float(roc_auc_score(labels, scores)) if 0 < labels.sum() < len(labels) else float("nan")


def train(config: TrainConfig, run_dir: Path, *, device="cpu", clip_weights=None, resume: bool = False,
          log=None, progress_factory=None, backbone=None, feature_path=None, loader_workers: int = 0,
          rebuild_features: bool = False) -> TrainResult:
    """Run (or resume) training; writes config.json, metrics.csv and checkpoints/epoch_N.pt in run_dir.

    Rank 0 holds the writer lock of run_dir for the whole run (a second writer gets LockedError), and
    of the feature cache while it is built. log: callable taking one line (the feature cache, each epoch);
    progress_factory(total, desc) -> tqdm-like bar or None; rebuild_features: see `Trainer`.
    """
    run_dir = Path(run_dir)
    rank, _ = _world()
    check_value(loader_workers, LOADER_WORKERS, "--loader-workers")
    check_run_dir(run_dir)
    with writer_lock(run_dir, "train run") if rank == 0 else nullcontext():
        return _train_locked(config, run_dir, rank, device=device, clip_weights=clip_weights, resume=resume,
                             log=log, progress_factory=progress_factory, backbone=backbone,
                             feature_path=feature_path, loader_workers=loader_workers,
                             rebuild_features=rebuild_features)


def _clean_temps(run_dir: Path) -> None:
    """Remove the temp files of an interrupted writer (atomic_path names them `.<name>.<random><suffix>`);
    called with the run's lock held, so none of them is being written."""
    patterns = [(run_dir / "checkpoints", ".epoch_*.pt.*.pt"), (run_dir, f".{METRICS_FILE}.*.csv"),
                (run_dir, f".{CONFIG_FILE}.*.json")]
    for folder, pattern in patterns:
        for path in folder.glob(pattern):
            if path.is_file() and not path.is_symlink():
                path.unlink()


def _train_locked(config: TrainConfig, run_dir: Path, rank: int, *, device, clip_weights, resume, log,
                  progress_factory, backbone, feature_path, loader_workers, rebuild_features) -> TrainResult:
    start = 1
    latest = latest_checkpoint(run_dir)
    if latest is not None and not resume:
        raise PointADError(f"{run_dir}: already holds checkpoints; pass --resume to continue or choose another --out")
    if resume and latest is not None:  # what resuming reads, checked before the features and the model
        check_optimizer_state(latest, load_checkpoint(latest))
        read_metrics(run_dir)
    if rank == 0:
        _clean_temps(run_dir)
    bar = progress_factory(None, "features") if progress_factory and rank == 0 and config.feature_cache else None
    try:
        trainer = Trainer(config, run_dir, device=device, clip_weights=clip_weights, backbone=backbone,
                          feature_path=feature_path, progress=bar, loader_workers=loader_workers,
                          rebuild_features=rebuild_features, log=log if rank == 0 else None)
    finally:
        if bar is not None:
            bar.close()
    if resume and latest is not None:
        start = trainer.restore(latest) + 1
    if rank == 0:
        write_run_record(run_dir, trainer.run_record())
    result = TrainResult(run_dir=run_dir)
    for epoch in range(start, config.epochs + 1):
        bar = progress_factory(len(trainer.rows), f"epoch {epoch}/{config.epochs}") if progress_factory else None
        try:
            metrics = trainer.run_epoch(epoch, progress=bar)
        finally:  # closed before an error is printed, so the error is a line of its own
            if bar is not None:
                bar.close()
        if rank == 0:
            # metrics first: a kill between the two re-runs this epoch on resume, which rewrites its row
            append_metrics(run_dir, EpochMetrics.of(epoch, metrics))
            trainer.checkpoint(epoch, metrics)
            if log is not None:
                log(f"epoch {epoch}/{config.epochs} " + " ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        result.epochs_run.append(epoch)
        result.metrics.append(metrics)
    return result
