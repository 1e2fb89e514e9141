"""Time Open3D's normals against the grid and graph normals (render/normals.py), and measure what changes in the
views and in what the model sees (issue 24, items 1-2; design §3.2).

Run: .venv/bin/python benchmarks/normals_bench.py [--repeats 5] [--model tiny|vit-l-14-336] [--image-size 336]
(about 15 s with the tiny model, 6 minutes with vit-l-14-336 on 2 CPUs; prints markdown tables, writes only to a
temporary folder it removes).

Clouds, all in one run: the synthetic MVTec-format "cookie" scan at 800 x 800 read and preprocessed to the
336 x 336 grid (as benchmarks/render_bench.py), and the dense 112 896-point height field
(render/synthetic/dense.py). Normal sets:
- open3d: `sample_render.estimate_normals` as render_sample calls it (hybrid search, radius 0.05 x the bounding
  radius or the plan's, at most 30 neighbours; Open3D's threads: all CPUs);
- grid CD: `grid_normals_of_points` from the sample's grid_index (central differences; one thread);
- grid PCA 3: the same with `grid_pca_normals` (a plane fitted to the cells within 3 cells; one thread);
- grid: what `--normals grid` renders, `grid_pca_normals_within`: the disc Open3D's radius covers (the radius
  over the grid's spacing, at most 3 cells; one thread);
- graph: `graph_normals` on the store's k-NN graph (`knn_graph`, k = RenderOptions.knn), which render_sample
  builds anyway; the query's own time is printed beside it, not added.
Table 1: median seconds, Open3D's time / ours, and the angle to Open3D's normals (sign ignored: Open3D's sign
is its eigen solver's, and the renderers turn every normal toward the eye).
Table 2: the 9 default views drawn by the splat renderer (render/splat.py draw_views, torch on the CPU) with
each normal set: the share of pixels within 2/255 of the open3d-normals views, and the model's patch tokens
(random weights, seed 0, as tests/render/test_splat.py compares renderers) as mean 1 - cosine against the
open3d-normals views, next to the same open3d-normals views with the camera moved one output pixel along each
view's x axis (the cloud moved by R_k^T B (D / f, 0, 0) in the world, view by view).
Issue 24's rule for a default: the feature change under a tenth of the one-pixel shift's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from pointad.render.camera import FRONT, fit_camera
from pointad.render.graph import knn_graph
from pointad.render.normals import graph_normals, grid_normals_of_points, grid_pca_normals, grid_pca_normals_within
from pointad.render.options import LIGHTS, RenderOptions
from pointad.render.readers import list_samples, preprocess_options, read_sample
from pointad.render.sample_render import estimate_normals
from pointad.render.splat import Cloud, draw_views
from pointad.render.synthetic import SyntheticSpec, generate
from pointad.render.synthetic.dense import dense_sample
from pointad.shared.registry import custom_entry
from pointad.train.model.backbone import FrozenCLIP, normalize
from pointad.train.model.model_config import load_model_config

WITHIN = 2  # 8-bit levels


def median_seconds(fn, repeats: int):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def angle_degrees(a, b) -> np.ndarray:
    return np.degrees(np.arccos(np.clip(np.abs(np.einsum("pi,pi->p", a, b)), 0, 1)))


def normal_sets(sample, options: RenderOptions, repeats: int) -> tuple[dict, dict, float]:
    """{name: (P, 3) normals}, {name: median seconds}, and the k-NN query's seconds."""
    points = sample.points
    camera = fit_camera(points, options.image_size, options.fov_degrees, options.margin)
    radius = camera.distance * np.sin(np.radians(options.fov_degrees) / 2) / options.margin
    seconds, normals = {}, {}
    within = options.plan.normals_radius or 0.05 * radius  # as render_sample asks Open3D
    seconds["open3d"], normals["open3d"] = median_seconds(lambda: estimate_normals(points, within), repeats)
    seconds["grid CD"], normals["grid CD"] = median_seconds(
        lambda: grid_normals_of_points(points, sample.grid_index, sample.grid_hw), repeats)
    seconds["grid PCA 3"], normals["grid PCA 3"] = median_seconds(
        lambda: grid_normals_of_points(points, sample.grid_index, sample.grid_hw, grid_pca_normals), repeats)
    seconds["grid"], normals["grid"] = median_seconds(lambda: grid_normals_of_points(
        points, sample.grid_index, sample.grid_hw, lambda xyz, ok: grid_pca_normals_within(xyz, ok, within)), repeats)
    query, (knn, _) = median_seconds(lambda: knn_graph(points, np.ones(len(points), bool), options.knn), repeats)
    seconds["graph"], normals["graph"] = median_seconds(lambda: graph_normals(points, knn), repeats)
    return normals, seconds, query


def views_of(sample, normals, options: RenderOptions, shift_pixels: float = 0.0) -> np.ndarray:
    """(V, S, S, 3) uint8 splat views as render_sample draws them; with a shift, each view's camera moved
    shift_pixels output pixels along its x axis (the cloud moved the other way, one view at a time)."""
    camera = fit_camera(sample.points, options.image_size, options.fov_degrees, options.margin)
    light_on, grey = LIGHTS[options.light]
    rotations = options.plan.rotations
    if shift_pixels == 0:
        levels = draw_views([Cloud(sample.points, normals, grey, camera)], rotations, options.point_size,
                            options.supersample, light_on)[0]
    else:
        step = np.array([shift_pixels * camera.distance / camera.focal, 0.0, 0.0])
        levels = np.concatenate([
            draw_views([Cloud(sample.points + (rotation.T @ FRONT @ step).astype(np.float32), normals, grey, camera)],
                       rotation[None], options.point_size, options.supersample, light_on)[0]
            for rotation in rotations])
    return np.repeat(levels[..., None], 3, axis=-1)


def seen_by_model(backbone, views) -> torch.Tensor:
    """The patch tokens of (V, S, S, 3) views; views smaller than the model's input scaled up to it (bilinear)."""
    images = normalize(views)
    side = backbone.config.image_size
    if images.shape[-1] != side:
        images = torch.nn.functional.interpolate(images, size=(side, side), mode="bilinear", align_corners=False)
    with torch.no_grad():
        return backbone.encode_image(images).patch_tokens.double()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", default="tiny", help="model config whose patch tokens are compared (random weights)")
    parser.add_argument("--image-size", type=int, default=336, help="views and grid side (the point budget its square)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as a 1-worker build draws splats
    options = RenderOptions(image_size=args.image_size, max_points=args.image_size**2)
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp) / "cookie", SyntheticSpec(format="mvtec3d", classes=("cookie",), defects=("bump",),
                                                     train=0, validation=0, test_good=0, per_defect=1, grid=800))
        entry = custom_entry("mvtec3d", Path(tmp) / "cookie")
        (ref,) = list_samples(entry)
        cookie = read_sample(entry, ref, preprocess_options(entry, ref.class_name, image_size=options.image_size,
                                                            max_points=options.max_points))
    clouds = {"cookie": cookie, "dense": dense_sample(options.image_size)}
    backbone = FrozenCLIP.from_config(replace(load_model_config(args.model), pretrained=None, random_init=True), seed=0)

    print(f"## 1. Normals: median of {args.repeats} runs, seconds (Open3D: all {os.cpu_count()} CPUs; ours: one "
          "thread); angle to Open3D's normals in degrees, sign ignored\n")
    print("| cloud | normals | seconds | Open3D / this | angle median | angle 95th | angle max |")
    print("|---|---|---|---|---|---|---|")
    measured = {}
    for name, sample in clouds.items():
        normals, seconds, query = normal_sets(sample, options, args.repeats)
        measured[name] = normals
        for way in normals:
            angle = angle_degrees(normals[way], normals["open3d"])
            extra = f" (+ {query:.4f} s k-NN query, built anyway)" if way == "graph" else ""
            print(f"| {name} ({len(sample.points)} pts) | {way} | {seconds[way]:.4f}{extra} | "
                  f"{seconds['open3d'] / seconds[way]:.1f}x | {np.median(angle):.2f} | {np.percentile(angle, 95):.2f} | "
                  f"{angle.max():.1f} |")

    torch.set_num_threads(os.cpu_count() or 1)  # the model's forward passes: not timed
    print(f"\n## 2. What changes: {options.views} splat views at {options.image_size}², against the open3d-normals "
          f"views; model '{args.model}' (random weights), patch tokens mean 1 - cos\n")
    print(f"| cloud | views | pixels within {WITHIN}/255 | mean abs level | patch 1 - cos | / one-pixel shift's |")
    print("|---|---|---|---|---|---|")
    for name, sample in clouds.items():
        reference = views_of(sample, measured[name]["open3d"], options)
        tokens = seen_by_model(backbone, reference)
        ways = {"grid CD normals": views_of(sample, measured[name]["grid CD"], options),
                "grid PCA 3 normals": views_of(sample, measured[name]["grid PCA 3"], options),
                "grid normals": views_of(sample, measured[name]["grid"], options),
                "graph normals": views_of(sample, measured[name]["graph"], options),
                "open3d, camera +1 px": views_of(sample, measured[name]["open3d"], options, 1.0)}
        change = {way: float((1 - torch.nn.functional.cosine_similarity(tokens, seen_by_model(backbone, views),
                                                                         dim=-1)).mean())
                  for way, views in ways.items()}
        for way, views in ways.items():
            diff = np.abs(views[..., 0].astype(np.int16) - reference[..., 0])
            print(f"| {name} | {way} | {(diff <= WITHIN).mean():.4f} | {diff.mean():.3f} | {change[way]:.3g} | "
                  f"{change[way] / change['open3d, camera +1 px']:.3f} |")
    print(f"\n{time.perf_counter() - started:.0f} s; 1-minute load {load_before:.2f} before, "
          f"{os.getloadavg()[0]:.2f} after (the machine may be shared: compare numbers of one run only)")


if __name__ == "__main__":
    main()
