"""The released code's per-dataset view plans (`--view-plan pointad-code`): numbers from datasets.yaml,
the dataset's variant picked by the build and recorded in the store."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from pointad.render.build import build_store
from pointad.render.options import RenderOptions
from pointad.render.view_plan import CodePlan, ViewPlan, make_view_plan, rotation
from pointad.shared.errors import ConfigError, PointADError
from pointad.shared.registry import load_registry
from pointad.shared.store import open_store


def _rx(degrees):
    return rotation("x", np.radians(degrees))


def _ry(degrees):
    return rotation("y", np.radians(degrees))


def _plan(dataset):
    return make_view_plan("pointad-code", 9, 0.0, load_registry()[dataset].view_plans["pointad-code"])


def test_mvtec_variant_is_the_plan_without_numbers():
    ours = _plan("mvtec3d")
    expected = [_rx(a) for a in (-45, -15, 0, 15, 45)] + [_ry(a) for a in (-30, -15, 15, 30)]
    np.testing.assert_allclose(ours.rotations, np.stack(expected), atol=1e-12)
    np.testing.assert_allclose(make_view_plan("pointad-code", 9).rotations, ours.rotations, atol=1e-12)
    assert ours.variant == "mvtec3d" and ours.normals_radius is None


def test_eyecandies_variant_pre_tilts_45_degrees_about_x():
    plan = _plan("eyecandies")
    expected = [_rx(a) @ _rx(45) for a in (-30, -15, 0, 10, 20)] + [_ry(a) @ _rx(45) for a in (-30, -15, 15, 30)]
    np.testing.assert_allclose(plan.rotations, np.stack(expected), atol=1e-12)
    np.testing.assert_allclose(plan.rotations[0], _rx(15), atol=1e-12)  # -30 after +45: one tilt of 15


def test_real3d_variant_flips_then_turns_in_36_degree_steps():
    plan = _plan("real3d")
    assert plan.views == 9 and set(plan.axes) == {"x"} and plan.normals_radius == 0.8
    np.testing.assert_allclose(np.degrees(plan.angles), np.arange(-144, 145, 36), atol=1e-9)
    np.testing.assert_allclose(plan.rotations[4], np.diag([1.0, -1.0, -1.0]), atol=1e-12)  # 0 after pi
    np.testing.assert_allclose(plan.rotations[5], _rx(216), atol=1e-12)


def test_plan_round_trips_through_its_record():
    for dataset in ("mvtec3d", "eyecandies", "real3d"):
        plan = _plan(dataset)
        again = ViewPlan.from_dict(plan.to_dict())
        assert again == plan
        np.testing.assert_allclose(again.rotations, plan.rotations)
    paper = make_view_plan("paper", 3)
    assert set(paper.to_dict()) == {"name", "axes", "angles"}  # older stores' record, unchanged


def test_bad_numbers_are_config_errors_naming_them():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['x_tilt'\]"):
        CodePlan.from_dict({"x_tilt": [0]})
    with pytest.raises(ConfigError, match="pre_rotation axes must be x, y or z"):
        CodePlan.from_dict({"pre_rotation": [["w", 45]]})
    with pytest.raises(ConfigError, match=r"has exactly 5 views, not 9"):
        make_view_plan("pointad-code", 9, 0.0, {"variant": "v", "x_tilts": [0, 1, 2], "y_tilts": [3, 4]})


TINY = dict(views=9, view_plan="pointad-code", image_size=32, supersample=1, max_points=2048, point_size=2)


def test_build_records_the_datasets_variant_and_refuses_mixing_variants(real3d_dataset, mvtec_dataset, tmp_path):
    """--format real3d data takes the real3d entry's plan; the store records it; MVTec data cannot join."""
    _, entry = real3d_dataset
    out = tmp_path / "r.zarr"
    build_store(entry, out, RenderOptions(**TINY), classes=["cookie"], splits=["train"])
    attrs = open_store(out).attrs
    assert attrs.view_plan["variant"] == "real3d" and attrs.view_plan["normals_radius"] == 0.8
    np.testing.assert_allclose(attrs.view_plan["pre_angles"], [np.pi])
    assert attrs.render.code_plan == load_registry()["real3d"].view_plans["pointad-code"]
    from pointad.render.verify import check_sample
    store = open_store(out)
    assert [p for i in range(len(store)) for p in check_sample(store.sample(i), store)] == []  # pixels re-projected
    with pytest.raises(PointADError, match="other render options \\(code_plan\\)"):
        build_store(mvtec_dataset[1], out, RenderOptions(**TINY), classes=["cookie"], splits=["train"])


# --- several pre-rotations: composed in the order listed (design §3.3), checked with scipy's rotations ---------

TWO_TURNS = {"variant": "two-turns", "pre_rotation": [["x", 30.0], ["z", 60.0]], "x_tilts": [0.0, 40.0],
             "y_tilts": [-25.0]}


def _expected_rotations(code_plan):
    """scipy: the pre-rotations applied one after the other (extrinsic Euler angles in listed order), then each
    view's tilt; `a * b` applies b first."""
    pre = Rotation.from_euler("".join(a for a, _ in code_plan["pre_rotation"]),
                              [d for _, d in code_plan["pre_rotation"]], degrees=True)
    tilts = [("x", t) for t in code_plan["x_tilts"]] + [("y", t) for t in code_plan["y_tilts"]]
    return np.stack([(Rotation.from_euler(axis, t, degrees=True) * pre).as_matrix() for axis, t in tilts])


def test_two_pre_rotations_apply_in_the_order_listed():
    plan = make_view_plan("pointad-code", 3, 0.0, TWO_TURNS)
    expected = _expected_rotations(TWO_TURNS)
    np.testing.assert_allclose(plan.rotations, expected, atol=1e-12)
    # the same, point by point: turn about x by 30, then about z by 60, then the view's tilt
    point = np.array([0.3, -0.7, 1.1])
    step = Rotation.from_euler("z", 60, degrees=True).apply(Rotation.from_euler("x", 30, degrees=True).apply(point))
    np.testing.assert_allclose(plan.rotations[2] @ point, Rotation.from_euler("y", -25, degrees=True).apply(step),
                               atol=1e-12)
    # the other order is another rotation: the case can tell them apart
    swapped = {**TWO_TURNS, "pre_rotation": TWO_TURNS["pre_rotation"][::-1]}
    assert np.abs(make_view_plan("pointad-code", 3, 0.0, swapped).rotations - expected).max() > 0.1
    assert ViewPlan.from_dict(plan.to_dict()) == plan


def test_a_store_built_with_two_pre_rotations_records_cameras_of_the_composed_rotation(mvtec_dataset, tmp_path):
    """A whole build (splat, 3 views at 32 px) with a plan of two pre-rotations: the stored cameras are the
    OpenCV camera (x right, y down: diag(1, -1, -1)) of the scipy-composed rotations, and the stored pixels
    are an independent pinhole projection of the stored points through them."""
    _, entry = mvtec_dataset
    out = tmp_path / "turns.zarr"
    options = RenderOptions(**{**TINY, "views": 3, "renderer": "splat"}, code_plan=TWO_TURNS)
    assert build_store(entry, out, options, classes=["cookie"], splits=["train"]).rendered == 1
    store = open_store(out)
    assert store.attrs.view_plan["pre_axes"] == ["x", "z"]
    np.testing.assert_allclose(store.attrs.view_plan["pre_angles"], np.radians([30.0, 60.0]))
    sample = store.sample(0)
    turns = np.diag([1.0, -1.0, -1.0]) @ _expected_rotations(TWO_TURNS)
    np.testing.assert_allclose(sample.extrinsic[:, :3, :3], turns, atol=1e-12)
    points = sample.xyz[: sample.n_points].astype(np.float64)
    centre = (points.min(axis=0) + points.max(axis=0)) / 2
    camera = (points - centre) @ turns.transpose(0, 2, 1)                 # (V, P, 3), centre at the origin
    camera[..., 2] += sample.extrinsic[:, None, 2, 3] + turns[:, None, 2] @ centre
    uv = camera[..., :2] / camera[..., 2:] * sample.intrinsic[0, 0] + sample.intrinsic[0, 2]
    seen = sample.visible[:, : sample.n_points]
    assert seen.any(axis=1).all()
    gap = np.abs(uv - sample.pixel[:, : sample.n_points])[seen]
    assert gap.max() <= 0.5 + 1e-3, f"largest gap {gap.max()} px"
