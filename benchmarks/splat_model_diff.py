"""How far the model's view of splat renders is from its view of Open3D's, next to a one-pixel camera shift.

Run: .venv/bin/python benchmarks/splat_model_diff.py [--classes cookie dome ...] [--large]
(about a minute with the tiny model; --large adds ViT-L-14-336 with random weights on the CPU: ~3.5 GB of
memory and several minutes; prints markdown tables, writes only to a temporary folder that it removes).

Issue 12 asks that the model barely sees the renderer: for one anomalous synthetic sample per class
(MVTec format, 800² scan, default render options), the 9 lit views are drawn three ways:
- legacy: Open3D's Visualizer (`render_sample`, the default renderer, the reference);
- splat: `render_sample` with `--renderer splat` (render/splat.py);
- shifted: Open3D again with the camera moved sideways by one output pixel's worth (the extrinsic's x
  translation changed by D / f, D the camera distance and f the focal length at the output size, so a
  point at the cloud's centre lands one pixel over; the legacy Visualizer refuses a moved principal point).
Each set goes through the frozen backbone (random weights, seed 0; the tiny config, optionally
ViT-L-14-336) and, against legacy, we print per class: the mean cosine distance 1 - cos of the tapped
layers' patch tokens (over layers, views and patches), their mean relative L2 |a - b| / |a|, the cosine
distance of the global features, and the mean absolute difference of the anomaly maps (channel 1 of
train/model/maps.py `patch_maps` with a PromptLearner's text features, seed 0; and, simpler, of the maps of
the patch tokens' cosine to the mean patch token of the legacy views). The splat column must be well
under the shifted one. Random weights are not CLIP's: what the table shows is how much each change of
pixels moves a network of this shape, not the trained model's scores.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pointad.render.camera import fit_camera
from pointad.render.rasterize import DrawStyle, LegacyRasterizer
from pointad.render.readers import list_samples, preprocess_options, read_sample
from pointad.render.sample_render import LIGHTS, RenderOptions, _capture_all, estimate_normals, render_sample
from pointad.render.synthetic import CLASSES, SyntheticSpec, generate
from pointad.shared.registry import custom_entry
from pointad.train.model.backbone import FrozenCLIP, normalize
from pointad.train.model.maps import patch_maps
from pointad.train.model.model_config import ModelConfig, load_model_config
from pointad.train.model.prompts import PromptLearner

WAYS = ("splat", "shifted")


def shifted_views(sample, options: RenderOptions, rasterizer: LegacyRasterizer, pixels: float) -> np.ndarray:
    """(V, S, S, 3) uint8 legacy views of `sample` as `render_sample` draws them, but with every view's camera
    moved along its x axis so that the cloud's centre lands `pixels` output pixels over."""
    points = sample.points
    camera = fit_camera(points, options.image_size, options.fov_degrees, options.margin)
    radius = camera.distance * np.sin(np.radians(options.fov_degrees) / 2) / options.margin
    plan = options.plan
    extrinsics = camera.extrinsics(plan.rotations)
    extrinsics[:, 0, 3] += pixels * camera.distance / camera.focal
    light_on, grey = LIGHTS[options.light]
    rasterizer.set_cloud(points, np.full((len(points), 3), grey),
                         estimate_normals(points, plan.normals_radius or 0.05 * radius))
    views = _capture_all(rasterizer, camera, extrinsics, DrawStyle(options.point_size, (1, 1, 1), light_on),
                         options.supersample)
    return np.clip(np.rint(views * 255), 0, 255).astype(np.uint8)


def render_three(classes, tmp: Path) -> tuple[dict, dict]:
    """({class: {"legacy" | "splat" | "shifted": (V, S, S, 3) uint8}}, {class: check of the shifted path})."""
    generate(tmp / "data", SyntheticSpec(format="mvtec3d", classes=tuple(classes), defects=("bump",), train=0,
                                         validation=0, test_good=0, per_defect=1, grid=800))
    entry = custom_entry("mvtec3d", tmp / "data")
    options = RenderOptions()
    rasterizer = LegacyRasterizer(options.image_size * options.supersample)
    images, checks = {}, {}
    for ref in list_samples(entry):
        prep = preprocess_options(entry, ref.class_name, image_size=options.image_size, max_points=options.max_points)
        sample = read_sample(entry, ref, prep)
        legacy = render_sample(sample, options, rasterizer).image
        splat = render_sample(sample, replace(options, renderer="splat"), None).image
        # the shifted path with no shift must be the reference itself, or the comparison means nothing
        unshifted = shifted_views(sample, options, rasterizer, 0.0)
        checks[ref.class_name] = int(np.abs(unshifted.astype(int) - legacy).max())
        images[ref.class_name] = {"legacy": legacy, "splat": splat,
                                  "shifted": shifted_views(sample, options, rasterizer, 1.0)}
    return images, checks


def pixel_stats(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(mean absolute difference in 8-bit levels, fraction of pixels within 2 levels) of two image sets."""
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return float(diff.mean()), float((diff.max(axis=-1) <= 2).mean())


@torch.no_grad()
def model_outputs(backbone: FrozenCLIP, text: torch.Tensor, views: np.ndarray) -> dict:
    """Patch tokens (L, V, G*G, D), global features (V, D), prompt maps (V, S, S), cosine maps (V, S, S)."""
    features = backbone.encode_image(normalize(views))
    maps = patch_maps(text, features.patch_tokens, views.shape[1])[:, 1]
    # compared in float64, so that distances near float32's rounding do not come out negative
    return {"tokens": features.patch_tokens.double(), "global": features.global_feature.double(),
            "maps": maps.double()}


def cosine_maps(tokens: torch.Tensor, reference: torch.Tensor, size: int) -> torch.Tensor:
    """(V, S, S): 1 - cos of each patch token to `reference` (L, D), averaged over layers, upsampled as
    patch_maps upsamples."""
    score = 1 - torch.einsum("lvgd,ld->lvg", tokens, F.normalize(reference, dim=-1).to(tokens.dtype)).mean(dim=0)
    side = int(round(score.shape[-1] ** 0.5))
    return F.interpolate(score.view(-1, 1, side, side), size=(size, size), mode="bilinear",
                         align_corners=False)[:, 0]


def compare(reference: dict, other: dict, centre: torch.Tensor, size: int) -> dict:
    a, b = reference["tokens"], other["tokens"]
    return {
        "patch 1-cos": float((1 - (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))).mean()),
        "patch rel L2": float(((a - b).norm(dim=-1) / a.norm(dim=-1)).mean()),
        "global 1-cos": float((1 - F.cosine_similarity(reference["global"], other["global"], dim=-1)).mean()),
        "map |diff| (prompts)": float((reference["maps"] - other["maps"]).abs().mean()),
        "map |diff| (cosine)": float((cosine_maps(a, centre, size) - cosine_maps(b, centre, size)).abs().mean()),
    }


def model_table(name: str, config: ModelConfig, images: dict) -> tuple[list[str], float]:
    """Markdown lines of one backbone's table and the seconds it took."""
    started = time.perf_counter()
    torch.manual_seed(0)
    backbone = FrozenCLIP.from_config(config, seed=0)
    text = PromptLearner.for_backbone(backbone, seed=0)(backbone)[0]  # (2, D): [normal, anomalous]
    rows = {}
    for class_name, ways in images.items():
        outputs = {way: model_outputs(backbone, text, views) for way, views in ways.items()}
        centre = outputs["legacy"]["tokens"].mean(dim=(1, 2))  # (L, D) the legacy views' mean patch token
        size = ways["legacy"].shape[1]
        rows[class_name] = {way: compare(outputs["legacy"], outputs[way], centre, size) for way in WAYS}
        rows[class_name]["map range"] = float(outputs["legacy"]["maps"].max() - outputs["legacy"]["maps"].min())
    keys = list(next(iter(rows.values()))["splat"])
    lines = [f"### {name}: {config.label}\n",
             "| class | " + " | ".join(f"{k}: splat / shifted" for k in keys) + " | legacy prompt-map range |",
             "|---|" + "---:|" * (len(keys) + 1)]
    ratios = []
    for class_name, row in rows.items():
        cells = []
        for k in keys:
            splat, shifted = row["splat"][k], row["shifted"][k]
            ratios.append(splat / shifted if shifted else float("inf"))
            cells.append(f"{splat:.2e} / {shifted:.2e}")
        lines.append(f"| {class_name} | " + " | ".join(cells) + f" | {row['map range']:.3f} |")
    lines.append(f"\nsplat / shifted, over every class and measure: median {np.median(ratios):.3f}, "
                 f"largest {max(ratios):.3f}.\n")
    return lines, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", nargs="+", default=list(CLASSES), choices=CLASSES)
    parser.add_argument("--large", action="store_true", help="also ViT-L-14-336 with random weights (CPU, slow)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="splat-model-diff-"))
    os.environ.setdefault("XDG_RUNTIME_DIR", str(tmp))  # Mesa's EGL wants one
    started = time.perf_counter()
    try:
        images, checks = render_three(args.classes, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    render_s = time.perf_counter() - started

    print(f"# Splat vs Open3D renders as the model sees them ({len(images)} synthetic classes, one anomalous 800² "
          f"scan each, 9 views at 336²; rendering took {render_s:.0f} s; CPU)\n")
    print("## Pixels (8-bit levels, against legacy)\n")
    print("| class | splat: mean abs diff | splat: within 2 levels | shifted 1 px: mean abs diff "
          "| shifted: within 2 levels | check: shift 0 vs legacy, max diff |")
    print("|---|---:|---:|---:|---:|---:|")
    for class_name, ways in images.items():
        (ms, fs), (mh, fh) = (pixel_stats(ways["legacy"], ways[w]) for w in WAYS)
        print(f"| {class_name} | {ms:.4f} | {fs:.4%} | {mh:.3f} | {fh:.4%} | {checks[class_name]} |")
    print("\n## Model features and maps (against legacy; each cell: splat / shifted by one pixel)\n")
    configs = [("tiny", load_model_config("tiny"))]
    if args.large:
        large = load_model_config("vit-l-14-336")
        configs.append(("ViT-L-14-336", replace(large, pretrained=None, random_init=True,
                                                label="ViT-L-14-336 (random weights)")))
    for name, config in configs:
        lines, seconds = model_table(name, config, images)
        print("\n".join(lines) + f"({seconds:.0f} s)\n")


if __name__ == "__main__":
    main()
