"""The released code's per-dataset view plans (`--view-plan pointad-code`): numbers from datasets.yaml,
the dataset's variant picked by the build and recorded in the store."""

from __future__ import annotations

import numpy as np
import pytest

from pointad.render.build import build_store
from pointad.render.sample_render import RenderOptions
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
    assert attrs.render["code_plan"] == load_registry()["real3d"].view_plans["pointad-code"]
    from pointad.render.verify import check_sample
    store = open_store(out)
    assert [p for i in range(len(store)) for p in check_sample(store.sample(i), store)] == []  # pixels re-projected
    with pytest.raises(PointADError, match="other render options \\(code_plan\\)"):
        build_store(mvtec_dataset[1], out, RenderOptions(**TINY), classes=["cookie"], splits=["train"])
