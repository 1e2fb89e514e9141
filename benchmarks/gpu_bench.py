"""The GPU end of the workflow in one run (issue 12, items 1 and 5): vision tower, `eval report`, a training
epoch and the splat renderer, in samples per second, with ViT-L-14-336 (random weights) under bf16 autocast.

Run here first (Open3D renders the seed store; pip fetches the wheels the device lacks):

    .venv/bin/python benchmarks/gpu_bench.py --prepare data/gpu-bench   # ~1 min; prints the size to carry
    .venv/bin/python benchmarks/gpu_bench.py --smoke                    # tiny model, CPU, ~15 s

Then ONE device call: `run` with carry ["data/gpu-bench"] (data/ is ignored by .gitignore, so no
.git/info/exclude edit is needed), timeout_s 540, and this command (one line, 2,000 characters at most;
`--device-command` prints it), which takes 3-4 minutes on an H200 by this script's estimate:

    .venv/bin/python benchmarks/gpu_bench.py --device-command   # prints that one line

The bare H200 machine (KINDS.md) has Python 3.12, torch, numpy, scipy, scikit-learn, matplotlib, h5py,
click, pyyaml, pillow, tqdm, safetensors, huggingface-hub and regex; it lacks zarr (+ numcodecs, donfig,
google-crc32c) and open_clip (+ ftfy, wcwidth); timm travels too, at the version installed here. The
wheels are 14 MiB, the seed store 13 MiB, the working tree ~1.5 MiB: ~29 MiB of the 64 MiB a call
carries (`--prepare` prints the sum). Open3D cannot travel: its CPU-only wheel alone is 105 MB, and
`render build` needs it even with `--renderer splat` (normals, readers, preprocessing). So the store is
rendered HERE (`--prepare`: 3 classes x 3 test samples, 9 views at 336 px, the splat renderer, the
default 112,896-point budget) and the device run copies its rows into a store of --train-samples +
--eval-samples rows with the library's store writer (the vision tower, maps and metrics cost the same
on copies). Not measured on the device therefore: `render build` itself (reading, Open3D normals, k-NN);
the splat draw is, on the seed store's clouds with PCA normals. `pointad` is not installed there: the
symlink /tmp/pp/pointad -> the checkout is the package (the repository root is the `pointad` namespace
package, as pyproject maps it). Without --seed the script renders its own seed first (needs Open3D).

What one run measures (markdown to stdout, and to $OUT/gpu_bench.md + $OUT/gpu_bench.json when OUT is
set, rewritten after each part so a timeout keeps what was done); on cuda the product's own bf16
autocast is on everywhere, as `eval report` and `train run` use it:
A. Vision tower alone: `eval.scoring.encode_batch` (host uint8 -> device, normalise, 9 views + RGB,
   float32 features out) on renderings read from the store beforehand, per batch size; and
   `encode_image` on device-resident tensors (36 images), the tower's own rate.
B. `eval report` end to end (`build_report` + `write_report`, one-vs-rest, protocol `points`) for a
   PointAD run trained 1 epoch by `train.loop.train` on the first class: once cold (the model built from
   the checkpoint, as a fresh `eval report` process does), then with the already-built model handed to
   the report's BackboneCache (a long-lived process), per batch size, median of --repeats; then one
   staged run per batch size split into store read (RenderStore.read_batch), vision tower
   (encode_batch), maps, back-projection and sample scores (the rest of score_batch: GPU maps, copies to
   the CPU), smoothing + fusion (scipy, CPU), metrics (class_metrics), write, and the rest (checkpoint,
   prompts, text features). The plain runs smooth a batch's rows and compute a class's metrics on threads
   (shared/threads.py); the staged run does both inline, so its stages add up, and reads the store ahead
   on a thread as the plain runs do ("store read" overlaps the others).
C. Training epochs (`Trainer.run_epoch`, batch 4) with the feature cache and without it (vision tower
   every batch): samples/s, median of the epochs after the first; then one staged epoch each, split into
   data (store read + collate), vision (tower or cache lookup), loss forward (maps, back-projection,
   losses), epoch AUROC (sklearn, all points) and the rest (backward, optimiser, per-batch syncs).
D. The splat renderer (render/splat.py `draw_views`, which takes a list of clouds and draws them in one
   call): 9 views at 336 px, supersample 3, point size 6, on --device for batches of --splat-batches
   samples (clouds of the seed store, and a dense 112,896-point height field), against the same draw on
   1 CPU thread, one sample at a time (as a 1-worker `render build` draws), in the same run; a staged
   call per batch: projection (numpy), shading (torch), splat keys + scatter-min (splat_levels), rest.
Stages are timed by wrapping the named functions in this process only (product code unchanged; on
cuda each GPU stage synchronises before and after, so the staged totals run slightly above the plain
ones). A part not started by --deadline seconds is skipped and says so; a part that fails prints its
error and the others still run. Timings on a shared machine: read ratios within one run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import numpy as np
import torch

DATASET = "synthetic"  # the generated folder's name, so the dataset reads as the registry's built-in one
SEED_SPEC = dict(classes=("cookie", "dowel", "torus"), defects=("bump", "hole"), test_good=1, per_defect=1, grid=0)
SMOKE_SPEC = dict(classes=("cookie", "dowel"), defects=("bump",), test_good=1, per_defect=1, grid=100)
# what the bare device machine lacks (KINDS.md), at the versions installed here; timm at the project's pin
WHEELS_MARK = ".gpu-bench-wheels"  # in the wheel folder --prepare made (only its wheels are ever deleted)
WHEELS = ("zarr", "numcodecs", "donfig", "google-crc32c", "open_clip_torch", "ftfy", "wcwidth", "timm")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")
CARRY_LIMIT = 64 * 2**20


# --- output ---------------------------------------------------------------------------------------------

class Results:
    """Markdown sections and a JSON of the numbers, printed as they come and rewritten to $OUT each time."""

    def __init__(self, out: str | None):
        self.out, self.lines, self.data, self.started = (Path(out) if out else None), [], {}, time.perf_counter()

    def log(self, message: str) -> None:
        print(f"[{time.perf_counter() - self.started:6.1f} s] {message}", file=sys.stderr, flush=True)

    def section(self, title: str, lines: list[str], key: str | None = None, data=None) -> None:
        block = [f"## {title}", "", *lines, ""]
        print("\n".join(block), flush=True)
        self.lines += block
        if key is not None:
            self.data[key] = data
        self.save()

    def save(self) -> None:
        if self.out is None:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "gpu_bench.md").write_text("\n".join(self.lines) + "\n")
        (self.out / "gpu_bench.json").write_text(json.dumps(self.data, indent=1, default=str))


def table(header: list[str], rows: list[list]) -> list[str]:
    """Markdown table lines; numbers are formatted by the caller."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(str(c) for c in row) + " |" for row in rows)]


def f(x: float, digits: int = 2) -> str:
    return f"{x:.{digits}f}"


# --- timing ---------------------------------------------------------------------------------------------

class StageClock:
    """Exclusive seconds per stage of wrapped calls (a call's time less that of wrapped calls inside it).

    `wrap` replaces an attribute of a module or class in this process until `restore`; GPU stages call
    `sync` before and after, so kernels queued by a stage are counted in it.
    """

    def __init__(self, sync):
        self.sync, self.spent, self._undo = sync, {}, []
        self._local, self._lock = threading.local(), threading.Lock()  # a stack per thread (the prefetching reader)

    @contextlib.contextmanager
    def frame(self, stage: str, gpu: bool = False):
        if gpu:
            self.sync()
        start = time.perf_counter()
        stack = self._local.__dict__.setdefault("stack", [])
        stack.append(0.0)
        try:
            yield
        finally:
            if gpu:
                self.sync()
            elapsed = time.perf_counter() - start
            with self._lock:
                self.spent[stage] = self.spent.get(stage, 0.0) + elapsed - stack.pop()
            if stack:
                stack[-1] += elapsed

    def wrap(self, owner, name: str, stage: str, gpu: bool = False, kind: str = "call") -> None:
        """kind: "call"; "generator" (drained into a list inside the frame); "iterator" (each next() timed)."""
        original, clock = getattr(owner, name), self

        def wrapped(*args, **kwargs):
            if kind == "iterator":
                return clock._timed_items(original(*args, **kwargs), stage)
            with clock.frame(stage, gpu):
                result = original(*args, **kwargs)
                return iter(list(result)) if kind == "generator" else result
        self.replace(owner, name, wrapped)

    def replace(self, owner, name: str, value) -> None:
        """Set an attribute of a module or class until `restore`."""
        self._undo.append((owner, name, getattr(owner, name)))
        setattr(owner, name, value)

    def _timed_items(self, items, stage: str):
        end = object()
        while True:
            with self.frame(stage):
                item = next(items, end)
            if item is end:
                return
            yield item

    def restore(self) -> None:
        for owner, name, original in reversed(self._undo):
            setattr(owner, name, original)
        self._undo.clear()


def synchronizer(device: str):
    return torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)


def timed(fn, sync) -> tuple[float, object]:
    sync()
    start = time.perf_counter()
    value = fn()
    sync()
    return time.perf_counter() - start, value


def peak_gpu_mib(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**20 if torch.device(device).type == "cuda" else None


def reset_peak(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()


# --- the store: seed (rendered where Open3D is) and its copies ------------------------------------------

def render_seed(workdir: Path, out: Path, smoke: bool, workers: int) -> Path:
    """Generate the synthetic test split and render it with the splat renderer into `out` (needs Open3D)."""
    from pointad.render import synthetic
    from pointad.render.build import build_store
    from pointad.render.datasets import open_dataset
    from pointad.render.options import RenderOptions

    spec = SMOKE_SPEC if smoke else SEED_SPEC
    # generated in a folder this call makes (never a `synthetic` folder already in --workdir), removed after
    made = Path(tempfile.mkdtemp(prefix="gpu-bench-data-", dir=workdir))
    try:
        root = synthetic.generate(made / DATASET, synthetic.SyntheticSpec(format="mvtec3d", seed=0, train=0,
                                                                          validation=0, **spec))
        options = (RenderOptions(views=2, supersample=1, renderer="splat") if smoke
                   else RenderOptions(renderer="splat"))
        result = build_store(open_dataset(format="mvtec3d", root=root), out, options, splits=["test"],
                             workers=workers)
    finally:
        shutil.rmtree(made, ignore_errors=True)
    if result.failures:
        raise SystemExit(f"{out}: {len(result.failures)} sample(s) failed to render, first: {result.failures[0]}")
    return out


def copy_rows(seed: Path, out: Path, counts: dict[str, int]) -> Path:
    """A store at `out` with counts[class] test rows per class, row k a copy of the class's seed row k mod n."""
    from pointad.shared.store import SampleArrays, open_store
    from pointad.shared.store_write import append_samples, create_store, write_sample

    source = open_store(seed)
    identities, rows = [], []
    for name, count in counts.items():
        class_rows = source.indices(class_name=name, split="test")
        if class_rows.size == 0:
            raise SystemExit(f"{seed}: no test rows of class {name}")
        for k in range(count):
            row = int(class_rows[k % class_rows.size])
            identity = source.identity(row)
            identities.append(identity | {"sample_id": f"copy{k:03d}/{identity['sample_id']}"})
            rows.append(row)
    create_store(out, source.attrs)
    cache = {}
    for index, row in zip(append_samples(out, identities), rows):
        if row not in cache:
            stored = source.sample(row)
            cache[row] = SampleArrays(**{fl.name: getattr(stored, fl.name) for fl in dataclasses.fields(SampleArrays)})
        write_sample(out, index, cache[row])
    return out


def model_config_file(name: str, workdir: Path) -> str:
    """The model TrainConfig names: "tiny", or a JSON file of ViT-L-14-336 with random weights."""
    from pointad.train.model.model_config import load_model_config
    if name != "vit-l-random":
        return name
    data = load_model_config("vit-l-14-336").to_dict() | {
        "name": "vit-l-random", "label": "ViT-L-14-336 (random weights)", "pretrained": None, "random_init": True}
    path = workdir / "vit-l-random.json"
    path.write_text(json.dumps(data, indent=1))
    return str(path)


@dataclasses.dataclass
class Context:
    args: argparse.Namespace
    device: str
    sync: object
    workdir: Path
    store: Path
    dataset: str
    train_class: str
    eval_rows: np.ndarray
    model: str            # TrainConfig.model: a config name or JSON path
    backbone: object      # built once, on the device
    views: int
    run_dir: Path | None = None


def setup(args, results: Results, workdir: Path) -> Context:
    from pointad.shared.store import open_store
    from pointad.train.model.backbone import load_backbone
    from pointad.train.model.model_config import DEFAULT_SEED, load_model_config

    steps = []
    seed = Path(args.seed) if args.seed else None
    if seed is None:
        start = time.perf_counter()
        seed = render_seed(workdir, workdir / "seed.zarr", args.smoke, args.render_workers)
        steps.append(("render the seed store here (Open3D normals, splat renderer)", time.perf_counter() - start))
    classes = sorted({open_store(seed).identity(int(i))["class_name"] for i in open_store(seed).indices(split="test")})
    train_class, others = classes[0], classes[1:]
    if not others:
        raise SystemExit(f"{seed}: needs at least two classes (one to train, the others to evaluate)")
    counts = {train_class: args.train_samples}
    counts |= {name: args.eval_samples // len(others) + (k < args.eval_samples % len(others))
               for k, name in enumerate(others)}
    start = time.perf_counter()
    store_path = copy_rows(seed, workdir / "renders.zarr", counts)
    steps.append((f"copy seed rows into a {sum(counts.values())}-row store", time.perf_counter() - start))
    store = open_store(store_path)
    dataset = store.identity(0)["dataset"]
    model = model_config_file(args.model, workdir)
    start = time.perf_counter()
    backbone = load_backbone(load_model_config(model), seed=DEFAULT_SEED).to(args.device)
    steps.append((f"build {backbone.label} and move it to {args.device}", time.perf_counter() - start))
    ctx = Context(args=args, device=args.device, sync=synchronizer(args.device), workdir=workdir, store=store_path,
                  dataset=dataset, train_class=train_class, eval_rows=store.indices(class_name=others, split="test"),
                  model=model, backbone=backbone, views=store.attrs.dims()["V"])
    gpu = torch.cuda.get_device_name() if torch.device(args.device).type == "cuda" else "none"
    attrs = store.attrs
    lines = [f"device {args.device} ({gpu}), torch {torch.__version__}, Python {platform.python_version()}, "
             f"{os.cpu_count()} CPUs; model {backbone.label}; autocast bf16 on cuda (the product's setting)",
             f"store: {len(store)} rows copied from {seed} ({len(open_store(seed))} rendered rows): train class "
             f"{train_class} x {counts[train_class]}, eval classes {', '.join(others)} x {len(ctx.eval_rows)} in all; "
             f"{ctx.views} views at {attrs.image_size} px, {attrs.dims()['P']} point slots per row",
             "setup: " + "; ".join(f"{name} {s:.1f} s" for name, s in steps)]
    results.section("Set-up", lines, "setup", {"device": args.device, "gpu": gpu, "torch": torch.__version__,
                                                "model": backbone.label, "rows": len(store), "counts": counts,
                                                "views": ctx.views, "steps": dict(steps)})
    return ctx


# --- A. vision tower ------------------------------------------------------------------------------------

def vision_part(ctx: Context, results: Results) -> None:
    from pointad.eval.scoring import encode_batch

    rows = ctx.eval_rows[:max(ctx.args.batch_sizes) * 2]
    data = open_store_cached(ctx).read_batch(rows, ("image", "rgb", "grid_hw", "grid_index", "valid"))
    autocast = torch.device(ctx.device).type == "cuda"
    out, lines, rgb = [], [], 0
    for size in ctx.args.batch_sizes:
        batches = [{k: v[i:i + size] for k, v in data.items()} for i in range(0, len(rows), size)]
        # warm-up (kernels, allocator), counting the samples with an RGB image (encoded as one more image)
        rgb = sum(len(encode_batch(b, ctx.backbone, ctx.device, autocast).rgb_rows) for b in batches)
        images = len(rows) * ctx.views + rgb
        reset_peak(ctx.device)
        seconds = statistics.median(timed(lambda: [encode_batch(b, ctx.backbone, ctx.device, autocast)
                                                   for b in batches], ctx.sync)[0] for _ in range(ctx.args.repeats))
        out.append({"batch": size, "seconds": seconds, "renderings_per_s": images / seconds,
                    "samples_per_s": len(rows) / seconds, "peak_gpu_mib": peak_gpu_mib(ctx.device)})
    count = ctx.views * 4
    size = ctx.backbone.config.image_size
    pixels = torch.rand(count, 3, size, size, device=ctx.device)
    with torch.no_grad(), torch.autocast(torch.device(ctx.device).type, dtype=torch.bfloat16, enabled=autocast):
        ctx.backbone.encode_image(pixels)
        seconds = statistics.median(timed(lambda: ctx.backbone.encode_image(pixels), ctx.sync)[0]
                                    for _ in range(max(3, ctx.args.repeats)))
    tower = {"images": count, "seconds": seconds, "renderings_per_s": count / seconds}
    per_sample = images / len(rows)
    lines += table(["what", "batch (samples)", "renderings/s", f"samples/s ({per_sample:.1f} images each)",
                    "peak GPU MiB"],
                   [[f"encode_batch on {len(rows)} stored samples", r["batch"], f(r["renderings_per_s"], 0),
                     f(r["samples_per_s"], 1), "-" if r["peak_gpu_mib"] is None else f(r["peak_gpu_mib"], 0)]
                    for r in out]
                   + [[f"encode_image, {count} device-resident images", f"{count} images",
                       f(tower["renderings_per_s"], 0), f(tower["renderings_per_s"] / per_sample, 1), ""]])
    lines += ["", f"{rgb} of {len(rows)} samples have RGB (one more image each). encode_batch includes the host "
              "-> device copy of uint8 renderings, normalisation and the float32 features it returns."]
    results.section("A. Vision tower alone", lines, "vision", {"encode_batch": out, "encode_image": tower})


_STORES = {}


def open_store_cached(ctx: Context):
    from pointad.shared.store import open_store
    if ctx.store not in _STORES:
        _STORES[ctx.store] = open_store(ctx.store)
    return _STORES[ctx.store]


# --- B. eval report -------------------------------------------------------------------------------------

def train_config(ctx: Context, **changes):
    from pointad.train.options import TrainConfig
    return TrainConfig(store=str(ctx.store), class_name=ctx.train_class, dataset=ctx.dataset, model=ctx.model,
                       **changes)


@contextlib.contextmanager
def shared_backbone(backbone):
    """`eval.report`'s BackboneCache hands out `backbone` for its own model (a long-lived process's model)."""
    import pointad.eval.report as report_module
    original = report_module.BackboneCache

    class Shared(original):
        def get(self, model, seed):
            return backbone if model.to_dict() == backbone.config.to_dict() else super().get(model, seed)
    report_module.BackboneCache = Shared
    try:
        yield
    finally:
        report_module.BackboneCache = original


def report_clock(ctx: Context) -> StageClock:
    import pointad.eval.report as report_module
    import pointad.eval.score_maps as score_maps
    import pointad.eval.scoring as scoring
    import pointad.shared.threads as threads
    from pointad.shared.store import RenderStore

    clock = StageClock(ctx.sync)
    # rows smoothed and metrics computed inline, so that the stages add up (the plain runs use the pools);
    # the store is still read ahead on a thread, so "store read" overlaps the other stages
    clock.replace(threads, "available", lambda: 1)
    clock.wrap(RenderStore, "read_batch", "store read")
    clock.wrap(scoring, "encode_batch", "vision tower", gpu=True)
    clock.wrap(scoring, "score_batch", "maps, back-projection, sample scores", gpu=True, kind="generator")
    for name in ("smooth_grid", "smooth_organized", "organized_weight", "smooth_graph", "rgb_point_map",
                 "fused_point_map", "compat_grid_map", "compat_fused_map"):
        clock.wrap(score_maps, name, "smoothing + fusion (CPU)")
    clock.wrap(report_module, "class_metrics", "metrics")
    clock.wrap(report_module, "write_report", "write report")
    return clock


def one_report(ctx: Context, batch_size: int, clock: StageClock | None = None) -> float:
    import pointad.eval.report as report_module
    from pointad.eval.options import ReportConfig

    config = ReportConfig(store=str(ctx.store), dataset=ctx.dataset, checkpoints=(str(ctx.run_dir),),
                          batch_size=batch_size)

    def run():
        report = report_module.build_report(config, ctx.device)
        report_module.write_report(report, "md", ctx.workdir / f"report-{batch_size}.md")
    try:
        return timed(run, ctx.sync)[0]
    finally:
        if clock is not None:
            clock.restore()


def report_part(ctx: Context, results: Results) -> None:
    from pointad.train.loop import train

    ctx.run_dir = ctx.workdir / "run"
    seconds, result = timed(lambda: train(train_config(ctx, epochs=1), ctx.run_dir, device=ctx.device,
                                          backbone=ctx.backbone), ctx.sync)
    results.data["train_run"] = {"seconds": seconds, "epoch_seconds": result.metrics[0]["seconds"]}
    n = len(ctx.eval_rows)
    cold = one_report(ctx, ctx.args.batch_sizes[0])
    plain, staged = {}, {}
    with shared_backbone(ctx.backbone):
        for size in ctx.args.batch_sizes:
            if size != ctx.args.batch_sizes[0] and not ctx.args.smoke:
                one_report(ctx, size)  # warm-up of this batch shape
            plain[size] = statistics.median(one_report(ctx, size) for _ in range(ctx.args.repeats))
            clock = report_clock(ctx)
            total = one_report(ctx, size, clock)
            staged[size] = clock.spent | {"total": total}
    stages = ["store read", "vision tower", "maps, back-projection, sample scores", "smoothing + fusion (CPU)",
              "metrics", "write report"]
    sizes = ctx.args.batch_sizes
    rows = [["end to end, model built from the checkpoint (cold, as a new process)", f(cold), f(n / cold, 1)]]
    rows += [[f"end to end, model already built, batch {s} (median of {ctx.args.repeats})", f(plain[s]),
              f(n / plain[s], 1)] for s in sizes]
    lines = [f"`train run` 1 epoch on {ctx.train_class} (feature cache; the run the report scores): {seconds:.1f} s "
             f"(epoch {result.metrics[0]['seconds']:.2f} s). Report: one-vs-rest, protocol points, {n} test samples "
             f"of {ctx.views} views (+ RGB).", "",
             *table(["report", "seconds", "samples/s"], rows), "",
             "Staged run (GPU stages synchronised; seconds, then samples/s of the stage alone):", "",
             *table(["stage", *(f"batch {s}: s" for s in sizes), *(f"batch {s}: samples/s" for s in sizes)],
                    [[stage, *(f(staged[s].get(stage, 0.0), 3) for s in sizes),
                      *(f(n / staged[s][stage], 1) if staged[s].get(stage) and stage != "write report" else "-"
                        for s in sizes)]
                     for stage in stages]
                    + [["rest (prompts, text features, checkpoint, bookkeeping)",
                        *(f(staged[s]["total"] - sum(staged[s].get(x, 0.0) for x in stages), 3) for s in sizes),
                        *("" for _ in sizes)],
                       ["total", *(f(staged[s]["total"], 3) for s in sizes), *(f(n / staged[s]["total"], 1)
                                                                              for s in sizes)]])]
    results.section("B. `eval report` end to end", lines, "report",
                    {"samples": n, "cold_seconds": cold, "plain_seconds": plain, "staged_seconds": staged})


# --- C. training epochs ---------------------------------------------------------------------------------

def train_clock(ctx: Context) -> StageClock:
    import pointad.train.loop as loop

    clock = StageClock(ctx.sync)
    clock.wrap(loop.Trainer, "_load", "data (store read + collate)", kind="iterator")
    clock.wrap(loop.Trainer, "_vision", "vision (tower or feature cache)", gpu=True)
    clock.wrap(loop.Trainer, "batch_loss", "loss forward (maps, back-projection, losses)", gpu=True)
    clock.wrap(loop, "_auroc", "epoch AUROC (sklearn)")
    return clock


def time_trainer(ctx: Context, cached: bool) -> dict:
    """Set up a Trainer (feature cache: the run's, reused), time --epochs epochs, then one staged epoch."""
    from pointad.train.loop import Trainer

    reset_peak(ctx.device)
    start = time.perf_counter()
    trainer = Trainer(train_config(ctx, feature_cache=cached, epochs=ctx.args.epochs + 1),
                      ctx.workdir / f"trainer-{cached}", device=ctx.device, backbone=ctx.backbone,
                      feature_path=ctx.run_dir / "features.zarr" if cached else None)
    set_up = time.perf_counter() - start
    epochs = [timed(lambda: trainer.run_epoch(e), ctx.sync)[0] for e in range(1, ctx.args.epochs + 1)]
    clock = train_clock(ctx)
    try:
        total = timed(lambda: trainer.run_epoch(ctx.args.epochs + 1), ctx.sync)[0]
    finally:
        clock.restore()
    return {"samples": len(trainer.rows), "set_up": set_up, "epochs": epochs,
            "seconds": statistics.median(epochs[1:] or epochs), "staged": clock.spent | {"total": total},
            "peak_gpu_mib": peak_gpu_mib(ctx.device)}


def train_part(ctx: Context, results: Results) -> None:
    if ctx.run_dir is None:  # part B did not run: the cached trainer makes the feature cache
        ctx.run_dir = ctx.workdir / "run"
    lines = []
    out = {cached: time_trainer(ctx, cached) for cached in (True, False)}
    n = out[True]["samples"]
    names = {True: "feature cache", False: "no cache (vision tower every batch)"}
    lines += table(["mode", "set-up s (feature cache: reused from the run's)", "s / epoch", "samples/s",
                    "peak GPU MiB"],
                   [[names[c], f(out[c]["set_up"]), f(out[c]["seconds"], 3), f(n / out[c]["seconds"], 1),
                     "-" if out[c]["peak_gpu_mib"] is None else f(out[c]["peak_gpu_mib"], 0)] for c in (True, False)])
    stages = list(dict.fromkeys(s for c in (True, False) for s in out[c]["staged"] if s != "total"))
    lines += ["", f"One staged epoch each ({n} samples, batch 4; seconds):", "",
              *table(["stage", names[True], names[False]],
                     [[s, *(f(out[c]["staged"].get(s, 0.0), 3) for c in (True, False))] for s in stages]
                     + [["rest (backward, optimiser, per-batch syncs)",
                         *(f(out[c]["staged"]["total"] - sum(out[c]["staged"].get(s, 0.0) for s in stages), 3)
                           for c in (True, False))],
                        ["total", *(f(out[c]["staged"]["total"], 3) for c in (True, False))]])]
    results.section(f"C. Training epochs (median of epochs 2..{ctx.args.epochs})", lines, "train",
                    {str(k): v for k, v in out.items()})


# --- D. splat renderer ----------------------------------------------------------------------------------

def pca_normals(points: np.ndarray, k: int = 16) -> np.ndarray:
    """(P, 3) unit normals: the smallest principal axis of each point's k nearest neighbours (benchmark
    only: Open3D's normals, which the store build uses, need Open3D)."""
    from scipy.spatial import cKDTree
    _, neighbours = cKDTree(points).query(points, k=k, workers=-1)
    local = points[neighbours] - points[neighbours].mean(axis=1, keepdims=True)
    return np.linalg.eigh(np.einsum("pki,pkj->pij", local, local))[1][:, :, 0].astype(np.float32)


def height_field(side: int, seed: int = 0) -> np.ndarray:
    """(side², 3) float32: one point per cell of a side x side grid, two bumps and a dent (0.1 m across)."""
    rng = np.random.default_rng(seed)
    g = np.linspace(-0.05, 0.05, side)
    x, y = (a.ravel() for a in np.meshgrid(g, g))
    z = (0.012 * np.exp(-((x - 0.015) ** 2 + y ** 2) / 0.0004) - 0.003 * np.exp(-((x + 0.01) ** 2 + (y + 0.025) ** 2)
                                                                               / 0.00005) + rng.normal(0, 5e-5, x.size))
    return np.stack([x, y, z], axis=1).astype(np.float32)


def splat_clock(ctx: Context) -> StageClock:
    import pointad.render.splat as splat
    clock = StageClock(ctx.sync)
    clock.wrap(splat, "supersampled_positions", "projection (numpy)")
    clock.wrap(splat, "window_depth", "projection (numpy)")
    clock.wrap(splat, "shade", "shading (torch)", gpu=True)
    clock.wrap(splat, "splat_levels", "splat keys + scatter-min (splat_levels)", gpu=True)
    return clock


def splat_part(ctx: Context, results: Results) -> None:
    from pointad.render.camera import fit_camera
    from pointad.render.options import LIGHTS, RenderOptions
    from pointad.render.splat import Cloud, draw_views

    options = RenderOptions(renderer="splat", **(dict(views=2, supersample=1) if ctx.args.smoke else {}))
    rotations, (light_on, grey) = options.plan.rotations, LIGHTS[options.light]

    def cloud(points):
        return Cloud(points, pca_normals(points), grey, fit_camera(points, options.image_size, options.fov_degrees,
                                                                   options.margin))
    store = open_store_cached(ctx)
    firsts = {}
    for row in store.indices(split="test"):
        firsts.setdefault(store.identity(int(row))["sample_id"].split("/", 1)[1], int(row))
    stored = [cloud(s.xyz[:s.n_points]) for s in (store.sample(r) for r in firsts.values())]
    dense = cloud(height_field(96 if ctx.args.smoke else 336))
    cases = [(f"seed store clouds ({np.mean([len(c.points) for c in stored]):.0f} points on average)", stored),
             (f"dense height field ({len(dense.points)} points)", [dense])]

    def draw(clouds, device):
        return draw_views(clouds, rotations, options.point_size, options.supersample, light_on, device)
    no_sync = synchronizer("cpu")
    rows, data = [], []
    threads = torch.get_num_threads()
    for name, clouds in cases:
        torch.set_num_threads(1)
        try:
            draw(clouds[:1], "cpu")  # warm-up
            cpu = statistics.median(timed(lambda: draw([c], "cpu"), no_sync)[0] for c in (clouds[:2] * 2)[:4])
        finally:
            torch.set_num_threads(threads)
        rows.append([name, "cpu, 1 thread", 1, f(cpu, 3), f(1 / cpu, 1), "1.00x", "", ""])
        entry = {"case": name, "cpu_1_thread_s_per_sample": cpu, "batches": []}
        for size in ctx.args.splat_batches:
            if time.perf_counter() - ctx.args.started > ctx.args.deadline + 60:
                rows.append([name, ctx.device, size, "skipped (deadline)", "", "", "", ""])
                continue
            batch = [clouds[i % len(clouds)] for i in range(size)]
            draw(batch, ctx.device)  # warm-up
            reset_peak(ctx.device)
            seconds = statistics.median(timed(lambda: draw(batch, ctx.device), ctx.sync)[0] for _ in range(2))
            clock = splat_clock(ctx)
            try:
                staged_total = timed(lambda: draw(batch, ctx.device), ctx.sync)[0]
            finally:
                clock.restore()
            split = clock.spent | {"rest": staged_total - sum(clock.spent.values())}
            rows.append([name, ctx.device, size, f(seconds / size, 4), f(size / seconds, 1),
                         f"{cpu * size / seconds:.1f}x",
                         "; ".join(f"{k} {v:.3f}" for k, v in split.items()),
                         "-" if peak_gpu_mib(ctx.device) is None else f(peak_gpu_mib(ctx.device), 0)])
            entry["batches"].append({"batch": size, "seconds": seconds, "samples_per_s": size / seconds,
                                     "staged": split, "peak_gpu_mib": peak_gpu_mib(ctx.device)})
        data.append(entry)
    lines = [f"`draw_views`: {len(rotations)} views at {options.image_size} px, supersample {options.supersample}, "
             f"point size {options.point_size:g}, light {options.light}; the CPU baseline draws one sample per "
             "call on one torch thread (a 1-worker build's budget), median of 2-4 calls; batches: median of 2 after "
             "a warm-up, then one staged call.", "",
             *table(["clouds", "device", "batch", "s / sample", "samples/s", "vs 1 CPU thread",
                     "staged call: seconds per stage", "peak GPU MiB"], rows)]
    results.section("D. Splat renderer (render/splat.py draw_views)", lines, "splat", data)


# --- summary --------------------------------------------------------------------------------------------

def summary(results: Results) -> None:
    """The issue's goals against this run's numbers (the parts that ran)."""
    data, rows = results.data, []
    vision = data.get("vision") or {}
    tower = max((r["samples_per_s"] for r in vision.get("encode_batch", [])), default=None)
    report = data.get("report") or {}
    if "plain_seconds" in report:
        size, seconds = min(report["plain_seconds"].items(), key=lambda item: item[1])
        rate = report["samples"] / seconds
        rows.append(["`eval report`, samples/s (model built, best batch: " + str(size) + ")", ">= 40",
                     f(rate, 1), "yes" if rate >= 40 else "NO"])
        if tower:
            rows.append(["`eval report` / vision tower alone (best encode_batch)", "-> 1",
                         f(rate / tower), ""])
    train = data.get("train") or {}
    if "False" in train and tower:
        rate = train["False"]["samples"] / train["False"]["seconds"]
        rows.append(["training epoch without cache, samples/s; / vision tower alone", "-> 1",
                     f"{rate:.1f}; {rate / tower:.2f}", ""])
    if "True" in train and "False" in train:
        ratio = train["True"]["seconds"] / train["False"]["seconds"]
        rows.append(["epoch with cache / without", "<= 0.10", f(ratio, 3), "yes" if ratio <= 0.10 else "NO"])
    for case in data.get("splat") or []:
        if not isinstance(case, dict) or not case.get("batches"):
            continue
        best = max(case["batches"], key=lambda b: b["samples_per_s"])
        rows.append([f"splat draw, {case['case']}: best batch {best['batch']} / 1 CPU thread", "",
                     f"{best['samples_per_s']:.1f} samples/s, "
                     f"{best['samples_per_s'] * case['cpu_1_thread_s_per_sample']:.1f}x", ""])
    if rows:
        results.section("Goals (issue 12)", table(["what", "goal", "measured", "met"], rows), "goals", rows)


# --- prepare / main -------------------------------------------------------------------------------------

def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def prepare(folder: Path, workers: int) -> None:
    """Render the seed store and download the wheels into `folder` (run here, before the device call)."""
    from importlib.metadata import version

    folder.mkdir(parents=True, exist_ok=True)
    from pointad.shared.store import open_store

    # wheels of an earlier --prepare are replaced below, so the wheel folder must be ours: made by this script
    wheels = folder / "whl"
    if wheels.exists() and not (wheels / WHEELS_MARK).is_file():
        raise SystemExit(f"{wheels}: exists and was not made by gpu_bench.py --prepare (no {WHEELS_MARK}); "
                         "choose another --prepare folder")
    wheels.mkdir(exist_ok=True)
    (wheels / WHEELS_MARK).write_text("wheels downloaded by benchmarks/gpu_bench.py --prepare\n")

    seed = folder / "seed.zarr"
    if seed.exists():
        open_store(seed)  # reused only if this code still reads it (StoreSchemaError, naming it, if not)
    else:
        with tempfile.TemporaryDirectory(prefix="gpu-bench-") as tmp:
            render_seed(Path(tmp), seed, smoke=False, workers=workers)
    pins = [f"{name}=={version(name)}" for name in WHEELS]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp",
                    *(a for p in PLATFORMS for a in ("--platform", p)), "-d", str(wheels), *pins], check=True)
    # two versions of one package stop the whole install there: drop the wheels of an earlier --prepare
    wanted = {(name.lower().replace("-", "_"), version(name)) for name in WHEELS}
    for wheel in wheels.glob("*.whl"):
        dist, release = wheel.name.split("-")[:2]
        if dist.lower() in {name for name, _ in wanted} and (dist.lower(), release) not in wanted:
            wheel.unlink()
    root = Path(__file__).resolve().parents[1]
    tracked = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             capture_output=True, check=True, cwd=root).stdout.decode().split("\0")
    tree = sum((root / p).stat().st_size for p in tracked if p and (root / p).is_file())
    seed_b, wheel_b = folder_bytes(seed), folder_bytes(wheels)
    total = seed_b + wheel_b + tree
    print(f"seed store {seed_b / 2**20:.1f} MiB, wheels {wheel_b / 2**20:.1f} MiB ({', '.join(pins)}), working "
          f"tree {tree / 2**20:.1f} MiB: {total / 2**20:.1f} MiB of the {CARRY_LIMIT // 2**20} MiB a call carries"
          + ("" if total < 0.9 * CARRY_LIMIT else "  -- TOO CLOSE: carry fewer seed rows"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepare", type=Path, help="render the seed store and fetch the wheels into this folder")
    parser.add_argument("--seed", help="rendered store whose rows are copied (default: render one here; Open3D)")
    parser.add_argument("--smoke", action="store_true", help="tiny model, CPU, 2 views, a few samples")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", default="vit-l-random", choices=["vit-l-random", "tiny"])
    parser.add_argument("--train-samples", type=int, default=32)
    parser.add_argument("--eval-samples", type=int, default=64)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 16], help="vision and report batches")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per training mode")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--splat-batches", type=int, nargs="+", default=[1, 4, 16, 32])
    parser.add_argument("--render-workers", type=int, default=max(1, min(8, (os.cpu_count() or 2) - 1)))
    parser.add_argument("--parts", nargs="+", default=["vision", "report", "train", "splat"],
                        choices=["vision", "report", "train", "splat"])
    parser.add_argument("--deadline", type=float, default=330, help="seconds after which no new part starts")
    parser.add_argument("--workdir", type=Path, help="working folder (default: a temporary one, removed)")
    parser.add_argument("--device-command", action="store_true", help="print the device command (docstring)")
    args = parser.parse_args()
    args.started = time.perf_counter()
    if args.device_command:
        print(next(line for line in __doc__.splitlines() if line.startswith("set -o pipefail")))
        return
    if args.prepare:
        prepare(args.prepare, args.render_workers)
        return
    if args.smoke:
        args.device, args.model = "cpu", "tiny"
        args.train_samples, args.eval_samples, args.batch_sizes = 4, 4, [2]
        args.epochs, args.repeats, args.splat_batches = 2, 1, [1, 2]
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: torch {torch.__version__} sees no GPU")
    results = Results(os.environ.get("OUT"))
    title = "# GPU-end benchmark" + (" (--smoke: tiny model, CPU; checks the script, not the speed)" if args.smoke
                                     else "")
    print(title + "\n", flush=True)
    results.lines += [title, ""]
    made = Path(tempfile.mkdtemp(prefix="gpu-bench-")) if args.workdir is None else None
    workdir = args.workdir or made
    workdir.mkdir(parents=True, exist_ok=True)
    parts = {"vision": vision_part, "report": report_part, "train": train_part, "splat": splat_part}
    try:
        ctx = setup(args, results, workdir)
        for name in args.parts:
            elapsed = time.perf_counter() - args.started
            if elapsed > args.deadline:
                results.section(f"{name}: skipped", [f"not started: {elapsed:.0f} s > --deadline {args.deadline:g}"])
                continue
            results.log(f"part {name}")
            try:
                parts[name](ctx, results)
            except Exception as exc:  # one failed part must not cost the others' numbers on a one-shot run
                traceback.print_exc()
                results.section(f"{name}: FAILED", [f"`{type(exc).__name__}: {exc}`"], name, {"error": repr(exc)})
    finally:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
    summary(results)
    results.section("Run", [f"total {time.perf_counter() - args.started:.0f} s"], "total_seconds",
                    time.perf_counter() - args.started)


if __name__ == "__main__":
    main()
