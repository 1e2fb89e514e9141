"""Training speed with and without the frozen-feature cache (design §6, §9), printed as a markdown table.

Builds a small synthetic render store (9 views at 336 px), then times `Trainer.run_epoch` with the
feature cache (vision tower run once, beforehand) and without it (vision tower every batch), each
in its own process so peak memory is measured separately. Also the vision tower's throughput.

    .venv/bin/python benchmarks/train_bench.py                  # tiny model (random weights), CPU
    .venv/bin/python benchmarks/train_bench.py --model vit-l-random --device cuda   # on a GPU machine

`vit-l-random` is ViT-L-14-336 with random weights: the same cost as the real model, no download.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import resource
import shutil
import tempfile
import time
from pathlib import Path

import torch


def backbone_for(name: str):
    from pointad.train.model.backbone import load_backbone
    from pointad.train.model.model_config import load_model_config
    if name == "vit-l-random":
        config = dataclasses.replace(load_model_config("vit-l-14-336"), pretrained=None, random_init=True,
                                     label="ViT-L-14-336 (random weights)")
        return load_backbone(config)
    return load_backbone(load_model_config(name))


def build_store(root: Path, classes: tuple[str, ...]) -> Path:
    from pointad.render import synthetic
    from pointad.render.build import build_store as build
    from pointad.render.datasets import open_dataset
    from pointad.render.options import RenderOptions
    data = synthetic.generate(root / "data", synthetic.SyntheticSpec(classes=classes, train=0, validation=0,
                                                                     test_good=3, per_defect=1))
    out = root / "renders.zarr"
    build(open_dataset(format="mvtec3d", root=data), out, RenderOptions(views=9), splits=["test"], workers=2)
    return out


def time_epochs(store: str, run_dir: str, model: str, device: str, cached: bool, epochs: int, queue) -> None:
    """Child process: set up a trainer, time `epochs` epochs, report seconds and peak memory."""
    from pointad.train.loop import TrainConfig, Trainer
    backbone = backbone_for(model)
    config = TrainConfig(store=store, class_name="cookie", model="tiny" if model == "tiny" else "vit-l-14-336",
                         feature_cache=cached, epochs=epochs)
    started = time.perf_counter()
    trainer = Trainer(config, Path(run_dir), device=device, backbone=backbone)
    setup = time.perf_counter() - started
    seconds = [trainer.run_epoch(e)["seconds"] for e in range(1, epochs + 1)]
    peak_gpu = torch.cuda.max_memory_allocated() / 2**20 if torch.device(device).type == "cuda" else 0.0
    queue.put({"setup": setup, "epochs": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
               / 1024, "peak_gpu_mb": peak_gpu, "samples": len(trainer.rows)})


def vision_throughput(model: str, device: str, batch: int = 9, repeats: int = 3) -> float:
    """Renderings per second through the frozen vision tower (DPAM and taps included)."""
    backbone = backbone_for(model).to(device)
    images = torch.rand(batch, 3, 336, 336, device=device)
    autocast = torch.device(device).type == "cuda"
    with torch.no_grad(), torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=autocast):
        backbone.encode_image(images)
        if autocast:
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(repeats):
            backbone.encode_image(images)
        if autocast:
            torch.cuda.synchronize()
    return batch * repeats / (time.perf_counter() - started)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", choices=["tiny", "vit-l-random"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--store", type=Path, help="Use this render store (class cookie) instead of building one.")
    parser.add_argument("--build-only", type=Path, help="Only build the benchmark store at this path, then stop.")
    args = parser.parse_args()
    if args.build_only:
        shutil.copytree(build_store(Path(tempfile.mkdtemp(prefix="train-bench-")), ("cookie",)), args.build_only)
        return
    root = Path(tempfile.mkdtemp(prefix="train-bench-"))
    try:
        store = args.store.resolve() if args.store else build_store(root, ("cookie",))
        context = multiprocessing.get_context("spawn")
        results = {}
        for cached in (True, False):
            queue = context.Queue()
            process = context.Process(target=time_epochs, args=(str(store), str(root / f"run-{cached}"), args.model,
                                                                args.device, cached, args.epochs, queue))
            process.start()
            results[cached] = queue.get()
            process.join()
        throughput = vision_throughput(args.model, args.device)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    with_cache = results[True]
    per_epoch = {k: sorted(v["epochs"])[len(v["epochs"]) // 2] for k, v in results.items()}
    print(f"# Training benchmark: model {args.model}, device {args.device}, {with_cache['samples']} samples x 9 views, "
          f"batch 4, median of {args.epochs} epochs")
    print("| mode | set-up s (incl. feature cache) | s / epoch | peak RSS MB | peak GPU MB |")
    print("|---|---|---|---|---|")
    for name, key in (("feature cache", True), ("no cache (vision tower every batch)", False)):
        r = results[key]
        print(f"| {name} | {r['setup']:.2f} | {per_epoch[key]:.3f} | {r['peak_rss_mb']:.0f} | {r['peak_gpu_mb']:.0f} |")
    ratio = per_epoch[True] / per_epoch[False]
    print(f"\nepoch with cache / epoch without: {ratio:.3f} (goal <= 0.10: {'met' if ratio <= 0.10 else 'NOT met'})")
    print(f"vision tower: {throughput:.1f} renderings/s ({throughput / 9:.2f} samples of 9 views/s)")


if __name__ == "__main__":
    main()
