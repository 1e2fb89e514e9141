"""The splat renderer (render/splat.py) against a plain loop, hand cases, and Open3D's legacy renderer (pixels and
what the tiny model sees)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import zarr
from click.testing import CliRunner

from pointad.render import synthetic
from pointad.render.camera import Camera, fit_camera
from pointad.render.cli import render
from pointad.render.datasets import open_dataset
from pointad.render.masks import footprints, splat_masks
from pointad.render.options import LIGHTS, RenderOptions
from pointad.render.rasterize import DrawStyle, worker_rasterizer
from pointad.render.readers import list_samples, preprocess_options, read_sample
from pointad.render.sample_render import _capture_all, estimate_normals, render_masks, render_sample
from pointad.render.splat import Cloud, draw_views, shade, splat_levels
from pointad.render.synthetic.dense import dense_sample
from pointad.shared.errors import ConfigError
from pointad.shared.store import open_store
from pointad.train.model.backbone import FrozenCLIP, normalize
from pointad.train.model.maps import patch_maps
from pointad.train.model.model_config import load_model_config
from pointad.train.model.prompts import PromptLearner

# Issue 12's bar for "images Open3D would draw", in 8-bit levels at the output size; what we measured is
# tighter (the tests below assert that too): 99.998-100% of pixels within 2 levels, mean 0.01-0.06.
WITHIN, FRACTION, MEAN = 2, 0.995, 0.5


def _levels_by_loop(u, v, depth, level, point_size, size):
    """The z-buffer drawn point by point (masks.py's footprint rule), white background, no averaging."""
    images, count = depth.shape
    out = np.full((images, size, size), 255)
    nearest = np.full((images, size, size), np.iinfo(np.int64).max)
    col0, cols, row0, rows = footprints(u, v, point_size)
    for i in range(images):
        for p in range(count):
            if depth[i, p] < 0:
                continue
            for row in range(max(row0[i, p], 0), min(row0[i, p] + rows[i, p], size)):
                for col in range(max(col0[i, p], 0), min(col0[i, p] + cols[i, p], size)):
                    if depth[i, p] < nearest[i, row, col]:  # strictly nearer: the first drawn keeps a tie
                        nearest[i, row, col], out[i, row, col] = depth[i, p], level[i, p]
    return out


@pytest.mark.parametrize("seed,point_size", [(0, 1.0), (1, 3.0), (2, 6.0), (3, 6.5), (4, 2.5)])
def test_splat_matches_loop_on_random_points(seed, point_size):
    rng = np.random.default_rng(seed)
    images, count, size = 3, 80, 21
    u, v = rng.uniform(-5, size + 5, (2, images, count))  # some footprints hang over the edges or miss
    depth = rng.integers(-3, 40, (images, count))  # few depths: many ties; negative = not drawn
    level = rng.integers(0, 255, (images, count))
    fast = splat_levels(u, v, depth, level, point_size, size).numpy()
    slow = _levels_by_loop(u, v, depth, level, point_size, size)
    where = np.argwhere(fast != slow)
    assert (fast != 255).any() and not len(where), f"{len(where)} pixels differ, first {where[:1]}"


def test_images_of_different_extents_match_the_loop_averaged_by_hand():
    # each image is drawn in its own box on a CPU: one in a top-left corner, one in a thin strip (a flat object
    # seen edge-on), one empty, one whose footprints hang over the right and bottom edges
    rng = np.random.default_rng(5)
    size, block, count = 24, 3, 60
    u = np.stack([rng.uniform(0, 7, count), rng.uniform(0, size, count), rng.uniform(0, size, count),
                  rng.uniform(size - 4, size + 3, count)])
    v = np.stack([rng.uniform(0, 7, count), rng.uniform(10, 12, count), rng.uniform(0, size, count),
                  rng.uniform(size - 4, size + 3, count)])
    depth = rng.integers(0, 30, (4, count))
    depth[2] = -1  # nothing drawn
    level = rng.integers(0, 255, (4, count))
    fast = splat_levels(u, v, depth, level, 4.0, size, block=block).numpy()
    full = _levels_by_loop(u, v, depth, level, 4.0, size)
    sums = full.reshape(4, size // block, block, size // block, block).sum(axis=(2, 4))
    expected = np.floor(sums / block**2 + 0.5)  # the mean rounded half up
    assert (fast[2] == 255).all() and (fast[0, -1] == 255).all() and (fast[3, 0] == 255).all()
    assert np.array_equal(fast, expected)


def test_block_average_rounds_the_exact_mean():
    # one 3 x 3 block: a point of size 2 at the block's top-left covers 4 of 9 pixels with level 0
    fast = splat_levels(np.array([[0.5]]), np.array([[0.5]]), np.array([[1]]), np.array([[0]]), 2, 3, block=3)
    assert fast.numpy().tolist() == [[[round(5 * 255 / 9)]]]  # 141.67 -> 142


def test_shading_of_a_point_facing_the_camera_by_hand():
    # a point at the view box's centre, normal along the view axis (pointing away: turned to the eye):
    # both front lights straight ahead, cos_theta = cos_alpha = 1; the back lights add nothing.
    # colour = c * 0.66 * 2 + 0.2 * 2 = 0.4 * 1.32 + 0.4 = 0.928 -> level 236.6 -> 237
    points = np.array([[0.0, 0.0, 0.0], [-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]], np.float32)
    normals = np.array([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]], np.float32)
    camera = Camera(image_size=64, focal=100.0, centre=(0.0, 0.0, 0.0), distance=10.0)
    level = shade(points, normals, 0.4, camera, np.eye(3)[None]).numpy()
    assert level[0, 0] == 237
    assert shade(points, normals, 0.4, camera, np.eye(3)[None], light_on=False).numpy().tolist() == [[102, 102, 102]]


def _o3d_views(rasterizer, points, normals, camera, rotations, options):
    """(V, S, S) float levels of Open3D's views (channels are equal for grey points)."""
    light_on, grey = LIGHTS[options.light]
    rasterizer.set_cloud(points, np.full((len(points), 3), grey), normals)
    views = _capture_all(rasterizer, camera, camera.extrinsics(rotations),
                         DrawStyle(options.point_size, (1, 1, 1), light_on), options.supersample)
    assert np.array_equal(views[..., 0], views[..., 2])
    return views[..., 0] * 255


def _agreement(splat, reference):
    diff = np.abs(splat.astype(np.float64) - reference)
    return float((diff <= WITHIN).mean()), float(diff.mean()), float(diff.max())


@pytest.fixture(scope="module")
def all_classes(tmp_path_factory):
    """One anomalous test sample of every synthetic class (MVTec format, 400 x 400 grid)."""
    spec = synthetic.SyntheticSpec(format="mvtec3d", seed=7, train=0, validation=0, test_good=0, per_defect=1,
                                   defects=("bump",), grid=400)
    root = synthetic.generate(tmp_path_factory.mktemp("splat") / "classes", spec)
    entry = open_dataset(format="mvtec3d", root=root)
    return [read_sample(entry, ref, preprocess_options(entry, ref.class_name, image_size=336, max_points=336 * 336))
            for ref in list_samples(entry)]


@pytest.mark.slow
def test_views_and_masks_match_open3d_on_every_synthetic_class_and_a_dense_cloud(all_classes):
    options = RenderOptions(views=3)
    rotations = options.plan.rotations
    rasterizer = worker_rasterizer(336 * 3)
    results = {}
    for sample in [*all_classes, dense_sample(336)]:
        points = sample.points
        camera = fit_camera(points, 336)
        normals = estimate_normals(points, 0.05 * camera.distance * np.sin(np.radians(15)) / 1.1)
        splat = draw_views([Cloud(points, normals, LIGHTS["on"][1], camera)], rotations, 6.0, 3)[0]
        views = _agreement(splat, _o3d_views(rasterizer, points, normals, camera, rotations, options))
        ours = splat_masks(points, sample.point_labels, camera, rotations, 6.0, 3)
        rasterizer.set_cloud(points, np.zeros((len(points), 3)))
        theirs = render_masks(rasterizer, sample.point_labels, camera, camera.extrinsics(rotations), 6.0, 3)
        assert theirs.any(), sample.sample_id
        results[f"{sample.class_name} ({len(points)} points)"] = (views, _agreement(ours * 255, theirs * 255.0))
    assert len(results) == 6 and any(len(s.points) == 336 * 336 for s in [dense_sample(336)])
    for name, ((within, mean, largest), (mask_within, mask_mean, _)) in results.items():
        message = f"{name}: views {within:.5f} within {WITHIN}, mean {mean:.3f}, max {largest:.0f}; masks {mask_within:.5f}"
        assert within >= FRACTION and mean < MEAN and mask_within >= FRACTION and mask_mean < MEAN, message
        # what we measured, with a little room: views 99.998%+, masks 99.99%+
        assert within >= 0.9999 and mean < 0.15 and mask_within >= 0.999, message


def test_lights_off_and_other_greys_match_open3d(all_classes):
    rasterizer = worker_rasterizer(120 * 2)
    sample = all_classes[0]
    camera = fit_camera(sample.points, 120)
    normals = estimate_normals(sample.points, 0.05 * camera.distance * np.sin(np.radians(15)) / 1.1)
    for light in ("off", "+", "-"):
        options = RenderOptions(views=2, image_size=120, supersample=2, light=light, point_size=4.0)
        light_on, grey = LIGHTS[light]
        splat = draw_views([Cloud(sample.points, normals, grey, camera)], options.plan.rotations, 4.0, 2, light_on)[0]
        within, mean, largest = _agreement(splat, _o3d_views(rasterizer, sample.points, normals, camera,
                                                              options.plan.rotations, options))
        assert within >= 0.999 and mean < 0.15, (light, within, mean, largest)


def _shifted_views(sample, options, rasterizer, pixels):
    """(V, S, S, 3) uint8 legacy views as `render_sample` draws them, each view's camera moved along its x axis
    so that the cloud's centre lands `pixels` output pixels over (the legacy Visualizer refuses a moved
    principal point, so the extrinsic's x translation moves by pixels * D / f)."""
    points = sample.points
    camera = fit_camera(points, options.image_size, options.fov_degrees, options.margin)
    radius = camera.distance * np.sin(np.radians(options.fov_degrees) / 2) / options.margin
    extrinsics = camera.extrinsics(options.plan.rotations)
    extrinsics[:, 0, 3] += pixels * camera.distance / camera.focal
    light_on, grey = LIGHTS[options.light]
    rasterizer.set_cloud(points, np.full((len(points), 3), grey),
                         estimate_normals(points, options.plan.normals_radius or 0.05 * radius))
    views = _capture_all(rasterizer, camera, extrinsics, DrawStyle(options.point_size, (1, 1, 1), light_on),
                         options.supersample)
    return np.clip(np.rint(views * 255), 0, 255).astype(np.uint8)


@pytest.mark.slow
def test_the_model_sees_splat_renders_far_closer_to_open3d_than_a_one_pixel_camera_shift(all_classes):
    """Issue 12: the model barely sees the renderer. The tiny backbone's patch tokens and prompt maps of the
    splat views differ from those of Open3D's views by far less than Open3D's own views moved by one pixel.
    Measured (box, cookie; 3 views): patch 1 - cos 2-3e-8 against 0.7-1.4e-3, map |diff| 4-7e-6 against 3-5e-3.
    Random weights: this is how much a network of this shape moves, not the trained CLIP model."""
    backbone = FrozenCLIP.from_config(load_model_config("tiny"), seed=0)
    with torch.no_grad():
        text = PromptLearner.for_backbone(backbone, seed=0)(backbone)[0]  # (2, D): [normal, anomalous]
    options = RenderOptions(views=3, normals="open3d")  # _shifted_views draws with Open3D's normals
    rasterizer = worker_rasterizer(options.image_size * options.supersample)
    for sample in all_classes[:2]:
        legacy = render_sample(sample, options, rasterizer).image
        unshifted = _shifted_views(sample, options, rasterizer, 0.0)
        assert np.array_equal(unshifted, legacy), "with no shift, the shifted path must draw the reference itself"
        ways = {"legacy": legacy, "splat": render_sample(sample, replace(options, renderer="splat"), None).image,
                "shifted": _shifted_views(sample, options, rasterizer, 1.0)}
        seen = {}
        with torch.no_grad():
            for way, views in ways.items():
                features = backbone.encode_image(normalize(views))
                seen[way] = (features.patch_tokens.double(),
                             patch_maps(text, features.patch_tokens, options.image_size)[:, 1].double())
        tokens, maps = seen["legacy"]
        distance = {way: (float((1 - torch.nn.functional.cosine_similarity(tokens, seen[way][0], dim=-1)).mean()),
                          float((maps - seen[way][1]).abs().mean())) for way in ("splat", "shifted")}
        message = f"{sample.class_name}: (patch 1 - cos, mean map |diff|) splat {distance['splat']}, shifted " \
                  f"{distance['shifted']}"
        assert distance["shifted"][0] > 0 and distance["shifted"][1] > 0, message
        assert distance["splat"][0] < 0.05 * distance["shifted"][0], message
        assert distance["splat"][1] < 0.05 * distance["shifted"][1], message


def test_batched_clouds_draw_as_each_alone(all_classes):
    rotations = RenderOptions(views=2).plan.rotations
    clouds = []
    for sample in all_classes[:3]:
        camera = fit_camera(sample.points, 96)
        clouds.append(Cloud(sample.points, estimate_normals(sample.points, 0.002), 0.7, camera))
    together = draw_views(clouds, rotations, 3.0, 2)
    for k, cloud in enumerate(clouds):
        assert np.array_equal(together[k], draw_views([cloud], rotations, 3.0, 2)[0]), k


def test_render_sample_splat_equals_legacy_except_image_bytes(mvtec_dataset):
    _, entry = mvtec_dataset
    options = RenderOptions(views=3, image_size=96, supersample=2, max_points=96 * 96, point_size=3)
    ref = next(r for r in list_samples(entry, ["cookie"], ["test"]) if r.label)
    sample = read_sample(entry, ref, preprocess_options(entry, "cookie", image_size=96, max_points=96 * 96))
    legacy = render_sample(sample, options, worker_rasterizer(96 * 2))
    splat = render_sample(sample, replace(options, renderer="splat"), None)
    for name in ("mask", "pixel", "visible", "proxy", "knn", "xyz"):
        assert np.array_equal(getattr(splat, name), getattr(legacy, name)), name
    diff = np.abs(splat.image.astype(int) - legacy.image.astype(int))
    assert (diff <= WITHIN).mean() >= 0.999 and diff.mean() < 0.15, ((diff <= WITHIN).mean(), diff.mean())
    assert RenderOptions(renderer="splat").masks == "splat"
    with pytest.raises(ConfigError, match="its masks are splatted"):
        RenderOptions(renderer="splat", masks="render")


@pytest.mark.slow
def test_build_info_and_verify_name_and_check_the_renderer(mvtec_dataset, tmp_path):
    _, entry = mvtec_dataset
    out = tmp_path / "splat.zarr"
    args = ["build", "--format", "mvtec3d", "--root", str(entry.root), "--classes", "cookie", "--splits", "test",
            "--out", str(out), "--views", "2", "--image-size", "64", "--supersample", "2", "--max-points", "4096",
            "--point-size", "3"]
    built = CliRunner().invoke(render, args + ["--renderer", "splat"])
    assert built.exit_code == 0 and "renderer splat" in built.output, built.output
    store = open_store(out)
    assert store.attrs.render.renderer == "splat" and store.complete.all()
    info = CliRunner().invoke(render, ["info", str(out)])
    assert "drawn by renderer splat, masks splat" in info.output, info.output
    assert CliRunner().invoke(render, ["verify", str(out)]).exit_code == 0
    # resuming with the default renderer is refused: one store, one renderer
    again = CliRunner().invoke(render, args)
    assert again.exit_code == 1 and "other render options (renderer)" in again.output, again.output
    # one changed pixel in the first row's views: verify re-renders it and finds the difference
    images = zarr.open_array(str(out / "views" / "image"), mode="r+")
    row = images[0]
    row[1, 10, 10] = 255 - row[1, 10, 10]
    images[0] = row
    verified = CliRunner().invoke(render, ["verify", str(out)])
    assert verified.exit_code == 1 and "stored images differ from a fresh splat render at 1 pixel(s)" in verified.output, \
        verified.output
