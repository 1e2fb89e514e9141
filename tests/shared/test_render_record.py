"""The store's render record (design §4.1): `RenderRecord`, the options a class was drawn with (`drawn`), and
verify, checkpoints and detect reading them from it alike; stores written before the record open unchanged."""

from __future__ import annotations

import json
import shutil
import typing
from dataclasses import fields, replace

import pytest
import zarr

from pointad.render.options import RenderOptions
from pointad.shared.errors import StoreSchemaError
from pointad.shared.store import StoreAttrs, open_store, store_fingerprint
from pointad.shared.store_schema import BEFORE_OPTION, CAMERA_CONVENTION, RENDER_ELSEWHERE, RenderRecord
from pointad.shared.store_write import create_store

# a store's render attribute as `render build` has written it (schema v2): every option but those written
# elsewhere, the build's point size 6.0, the sizes its classes were drawn with; ints where a float is typed
WRITTEN = {"view_plan": "paper", "angle_shift": 0, "supersample": 1, "point_size": 6.0, "light": "on",
           "downsample": 1.0, "visibility": "nearest", "surface_tolerance": 0.01, "renderer": "splat",
           "masks": "splat", "code_plan": None, "point_sizes": {"a/cookie": 7.0, "a/torus": 12}}
CAMERA = {"model": "pinhole", "fov_degrees": 30, "margin": 1.1}


def _attrs(render: dict) -> StoreAttrs:
    return StoreAttrs(views=2, image_size=48, max_points=48 * 48, knn=8, camera=CAMERA,
                      view_plan={"name": "paper", "axes": ["x", "x"], "angles": [-1.0, 1.0]}, render=render)


def test_record_names_the_options_of_render_options_with_their_types():
    """shared imports no stage: the record declares RenderOptions' fields itself, and this test keeps them one."""
    record, options = typing.get_type_hints(RenderRecord), typing.get_type_hints(RenderOptions)
    assert [f.name for f in fields(RenderRecord)] == [f.name for f in fields(RenderOptions)] + ["point_sizes"]
    differing = {name: (record[name], options[name]) for name in options if record[name] != options[name]}
    assert differing == {}
    assert set(BEFORE_OPTION) <= set(options) and set(RENDER_ELSEWHERE) <= set(options)


def test_round_trip_record_dict_record():
    record = RenderRecord.from_dict(WRITTEN, "renders.zarr")
    again = RenderRecord.from_dict(record.to_dict(), "renders.zarr")
    assert again == record and again.to_dict() == record.to_dict() == WRITTEN
    assert record.angle_shift == 0.0 and isinstance(record.angle_shift, float)  # typed when read ...
    assert isinstance(record.to_dict()["angle_shift"], int)  # ... and written back as read
    attrs = _attrs(WRITTEN)
    assert StoreAttrs.from_dict(attrs.to_dict(), "renders.zarr") == attrs
    assert attrs.to_dict()["render"] == WRITTEN  # the options written elsewhere are not repeated


def test_a_class_is_drawn_at_its_own_point_size_and_one_without_at_the_builds():
    render = _attrs(WRITTEN).render
    assert render.point_size == 6.0 and render.point_sizes == {"a/cookie": 7.0, "a/torus": 12.0}
    cookie, torus, other = render.drawn("a", "cookie"), render.drawn("a", "torus"), render.drawn("b", "cookie")
    assert (cookie["point_size"], torus["point_size"], other["point_size"]) == (7.0, 12.0, 6.0)
    assert "point_sizes" not in cookie
    # the rest is the record's, the options written elsewhere included, typed; normals as a store before the
    # option drew them (WRITTEN records none): open3d, whatever RenderOptions' default
    assert {k: v for k, v in cookie.items() if k != "point_size"} == {
        "views": 2, "view_plan": "paper", "angle_shift": 0.0, "image_size": 48, "supersample": 1,
        "max_points": 48 * 48, "light": "on", "downsample": 1.0, "visibility": "nearest", "surface_tolerance": 0.01,
        "knn": 8, "fov_degrees": 30.0, "margin": 1.1, "renderer": "splat", "masks": "splat", "code_plan": None,
        "normals": "open3d"}
    assert RenderOptions.from_store(render, "a", "torus").point_size == 12.0
    assert RenderOptions(**cookie) == RenderOptions.from_store(render, "a", "cookie")


def test_options_a_store_did_not_record_are_what_its_build_did_or_the_defaults():
    render = _attrs({"light": "-"}).render  # no point size, no masks, no code plan: an older or hand-made store
    assert render.drawn("a", "cookie") == {"views": 2, "image_size": 48, "max_points": 48 * 48, "light": "-", "knn": 8,
                                           "fov_degrees": 30.0, "margin": 1.1, "masks": "render", "code_plan": None,
                                           "normals": "open3d"}
    assert (render.masks, render.point_sizes, render.renderer, render.point_size) == ("render", {}, None, None)
    options = RenderOptions.from_store(render, "a", "cookie")
    assert (options.point_size, options.masks, options.supersample) == (6.0, "render", 3)
    assert RenderOptions().normals is None and options.normals == "open3d", "not the data's default: open3d's bytes"
    assert render.to_dict() == {"light": "-", "views": 2, "image_size": 48, "max_points": 48 * 48, "knn": 8,
                                "fov_degrees": 30, "margin": 1.1}  # nothing added that the store did not say


@pytest.mark.parametrize("change, message", [
    ({"colour": "red"}, "store attribute 'render': unknown key(s) ['colour']; known: ["),
    ({"renderer": ["splat"]}, "store attribute 'render': 'renderer' must be str, got ['splat']"),
    ({"supersample": 1.5}, "store attribute 'render': 'supersample' must be int, got 1.5"),
    ({"light": None}, "store attribute 'render': 'light' must be str, got None"),
    ({"code_plan": [1]}, "store attribute 'render': 'code_plan' must be a mapping or null, got [1]"),
    ({"point_sizes": {"a/cookie": "7"}}, "store attribute render.point_sizes.a/cookie must be a finite number > 0, "
                                         "got '7'"),
    # a key holding a newline (found by the metadata fuzz in tests/faults/test_tampered_files.py): printed escaped
    ({"point_sizes": {"a/\n": None}}, "store attribute render.point_sizes.a/\\n must be a finite number > 0, got None"),
])
def test_a_wrong_key_or_type_is_one_line_naming_the_store_and_key(change, message):
    data = _attrs(WRITTEN).to_dict()
    data["render"] = {**data["render"], **change}
    with pytest.raises(StoreSchemaError) as info:
        StoreAttrs.from_dict(data, source="renders.zarr")
    assert str(info.value).startswith(f"renders.zarr: {message}") and "\n" not in str(info.value)


def test_an_option_out_of_range_is_refused_when_a_class_is_read():
    render = _attrs({**WRITTEN, "point_sizes": {"a/cookie": 500.0}}).render
    with pytest.raises(StoreSchemaError, match=r"^renders.zarr: store attribute 'render': 'point_size' must be in "
                                               r"\(0, 100\], got 500.0$"):
        RenderOptions.from_store(render, "a", "cookie", "renders.zarr")
    with pytest.raises(StoreSchemaError, match=r"^renders.zarr: store attribute 'render': --light must be one of"):
        RenderOptions.from_store(_attrs({**WRITTEN, "light": "dim"}).render, "a", "cookie", "renders.zarr")


@pytest.mark.parametrize("render", [WRITTEN, {k: v for k, v in WRITTEN.items() if k not in ("masks", "code_plan")}],
                         ids=["as written today", "before masks and code_plan"])
def test_a_store_written_before_the_record_opens_and_keeps_its_fingerprint(tmp_path, render):
    """The root attributes exactly as `render build` wrote them before RenderRecord: the store opens, its
    identity form (what the fingerprint hashes) holds the render mapping as written, and writing the
    attributes back changes no byte of it."""
    path = tmp_path / "old.zarr"
    create_store(path, _attrs({}))
    document = path / "zarr.json"
    meta = json.loads(document.read_text())
    meta["attributes"]["render"] = render
    document.write_text(json.dumps(meta))
    store = open_store(path)
    old_identity = {**{k: v for k, v in meta["attributes"].items() if k != "failures"}, "schema_version": 1,
                    "camera": CAMERA,
                    "render": {**render, "views": 2, "image_size": 48, "max_points": 48 * 48, "knn": 8,
                               "fov_degrees": 30, "margin": 1.1}}
    assert store.attrs.identity_form() == old_identity
    assert store.attrs.to_dict()["render"] == render
    assert store.attrs.render.drawn("a", "torus")["point_size"] == 12.0
    assert store.attrs.render.drawn("a", "cookie")["masks"] == render.get("masks", "render")
    fingerprint = store_fingerprint(path)
    zarr.open_group(path, mode="r+").attrs.update(store.attrs.to_dict())
    assert store_fingerprint(path) == fingerprint
    assert {k: v for k, v in json.loads(document.read_text())["attributes"]["camera"].items()
            if k not in CAMERA_CONVENTION} == CAMERA


# --- a store whose class is drawn at another size than the build's: verify, checkpoints, detect agree --------

SPLAT = RenderOptions(views=3, image_size=96, supersample=1, max_points=96 * 96, renderer="splat")


@pytest.fixture(scope="module")
def sized_store(mvtec_dataset, tmp_path_factory):
    """The cookie test split drawn at point size 7 (the registry's, for cookie), the build's size 6.0."""
    from pointad.render.build import build_store
    _, entry = mvtec_dataset
    entry = replace(entry, class_options={"cookie": {"render": {"point_size": 7}}})
    out = tmp_path_factory.mktemp("sized") / "renders.zarr"
    result = build_store(entry, out, SPLAT, classes=["cookie"], splits=["test"])
    assert result.rendered == 6 and not result.failures
    return out, entry.name


def test_verify_detect_and_the_record_read_the_size_the_class_was_drawn_with(sized_store, tmp_path):
    from pointad.eval.detect import Reference, reference_render
    from pointad.render.verify import verify_store
    from pointad.shared.store_write import update_attrs
    path, dataset = sized_store
    store = open_store(path)
    render = store.attrs.render
    assert render.point_size == 6.0 and render.point_sizes == {f"{dataset}/cookie": 7.0}
    drawn = RenderOptions.from_store(render, dataset, "cookie", str(path))
    assert drawn == replace(SPLAT, point_size=7.0, normals="auto")  # SPLAT chose none: the build recorded auto
    choice = reference_render(Reference(store=str(path), dataset=dataset, class_name="cookie", rows=[]))
    assert choice.options == drawn and choice.sources["point_size"] == "recorded"
    # a fresh splat render gives the same bytes only at the size the rows were drawn with
    assert verify_store(store, rerender=2) == []
    unsized = tmp_path / "unsized.zarr"  # as if the build had not recorded the class's size: the build's 6.0
    shutil.copytree(path, unsized)
    update_attrs(unsized, render={**render.to_dict(), "point_sizes": {}})
    assert any("differ from a fresh splat render" in p for p in verify_store(open_store(unsized), rerender=1))


def test_a_build_records_the_class_sizes_before_it_draws_a_row(mvtec_dataset, tmp_path, monkeypatch):
    import pointad.render.build as build
    _, entry = mvtec_dataset
    entry = replace(entry, class_options={"cookie": {"render": {"point_size": 9}}})

    def killed(tasks, *args):
        raise KeyboardInterrupt  # the build dies before its first row is drawn
        yield

    monkeypatch.setattr(build, "_run", killed)
    out = tmp_path / "renders.zarr"
    with pytest.raises(KeyboardInterrupt):
        build.build_store(entry, out, SPLAT, classes=["cookie"], splits=["test"])
    assert open_store(out).attrs.render.point_sizes == {f"{entry.name}/cookie": 9.0}
