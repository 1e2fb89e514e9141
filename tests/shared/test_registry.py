"""Dataset registry (design §2): datasets.yaml validation, root resolution, class selection."""

from __future__ import annotations

from pathlib import Path

import pytest

from pointad.shared.errors import ConfigError, DatasetError
from pointad.shared.registry import DatasetEntry, custom_entry, load_registry, resolve_dataset, select_classes


def _write(tmp_path, text):
    path = tmp_path / "datasets.yaml"
    path.write_text(text)
    return path


def test_repository_registry_names_the_paper_datasets_and_aux_classes():
    registry = load_registry()
    assert {"mvtec3d", "eyecandies", "real3d", "synthetic"} <= set(registry)
    assert registry["mvtec3d"].aux_classes == ("carrot", "cookie", "dowel")
    assert registry["eyecandies"].aux_classes == ("Confetto", "LicoriceSandwich", "PeppermintCandy")
    assert registry["real3d"].aux_classes == ("seahorse", "shell", "starfish")
    for entry in registry.values():
        assert set(entry.aux_classes) <= set(entry.classes or entry.aux_classes)


def test_unknown_key_and_format_are_errors_naming_them(tmp_path):
    path = _write(tmp_path, "datasets:\n  a: {format: mvtec3d, root: x, clases: [a]}\n")
    with pytest.raises(ConfigError, match=r"dataset 'a': unknown key\(s\) \['clases'\]"):
        load_registry(path)
    path = _write(tmp_path, "datasets:\n  a: {format: ply, root: x}\n")
    with pytest.raises(ConfigError, match="format 'ply'; known formats: mvtec3d, eyecandies, real3d"):
        load_registry(path)
    path = _write(tmp_path, "datasets: [1, 2\n")
    with pytest.raises(ConfigError, match=f"{path}: not valid YAML"):
        load_registry(path)


def test_relative_root_resolves_against_pointad_data_and_root_overrides(tmp_path, monkeypatch):
    registry = {"d": DatasetEntry(name="d", format="real3d", root=Path("Real3D"))}
    monkeypatch.setenv("POINTAD_DATA", str(tmp_path / "base"))
    assert resolve_dataset("d", registry=registry).root == tmp_path / "base" / "Real3D"
    assert resolve_dataset("d", root=tmp_path / "mine", registry=registry).root == tmp_path / "mine"
    monkeypatch.delenv("POINTAD_DATA")
    assert resolve_dataset("d", registry=registry).root == Path.cwd() / "data" / "Real3D"


def test_registry_file_from_environment(tmp_path, monkeypatch):
    path = _write(tmp_path, "datasets:\n  only: {format: real3d, root: /abs/path}\n")
    monkeypatch.setenv("POINTAD_REGISTRY", str(path))
    assert list(load_registry()) == ["only"]
    assert resolve_dataset("only").root == Path("/abs/path")


def test_class_options_override_dataset_options():
    entry = DatasetEntry.from_dict("d", {"format": "mvtec3d", "root": "r",
                                         "options": {"render": {"point_size": 6, "view_plan": "paper"}},
                                         "class_options": {"foam": {"render": {"point_size": 4}}}})
    assert entry.options_for("foam") == {"render": {"point_size": 4, "view_plan": "paper"}}
    assert entry.options_for("rope") == {"render": {"point_size": 6, "view_plan": "paper"}}


def test_custom_data_discovers_classes_from_folders(tmp_path):
    for name in ("widget", "bolt", ".hidden"):
        (tmp_path / name).mkdir()
    (tmp_path / "notes.txt").write_text("x")
    entry = custom_entry("mvtec3d", tmp_path)
    assert select_classes(entry, None) == ("bolt", "widget")
    assert select_classes(entry, ["widget"]) == ("widget",)
    with pytest.raises(DatasetError, match=r"unknown class\(es\) gear .*present: bolt, widget"):
        select_classes(entry, ["gear"])


def test_registry_class_list_orders_and_limits_the_default_selection(tmp_path):
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
    entry = DatasetEntry(name="d", format="mvtec3d", root=tmp_path, classes=("c", "a", "z"))
    assert select_classes(entry, None) == ("c", "a")
    assert select_classes(entry, ["b"]) == ("b",)  # on disk but unlisted: still usable by name


def test_neither_name_nor_format_and_root():
    with pytest.raises(ConfigError, match="name a dataset"):
        resolve_dataset(None, format="mvtec3d")


@pytest.mark.parametrize("value, key, expected", [
    ("options: [1, 2]", "options", "must be a mapping, got [1, 2]"),
    ("options: {preprocess: 3}", "options.preprocess", "must be a mapping, got 3"),
    ("root: [x]", "root", "must be a path or null, got ['x']"),
    ("classes: cookie", "classes", "must be a list of str or null, got 'cookie'"),
    ("aux_classes: [{a: 1}]", "aux_classes[0]", "must be str, got {'a': 1}"),
    ("class_options: [foam]", "class_options", "must be a mapping, got ['foam']"),
    ("class_options: {foam: {render: 5}}", "class_options.foam.render", "must be a mapping, got 5"),
    ("generate: 5", "generate", "must be a mapping or null, got 5"),
])
def test_wrong_types_are_one_line_errors_naming_file_and_key(tmp_path, value, key, expected):
    root = "    root: x\n" * ("root" not in value)
    path = _write(tmp_path, f"datasets:\n  a:\n    format: mvtec3d\n    {value}\n" + root)
    with pytest.raises(ConfigError) as info:
        load_registry(path)
    message = str(info.value)
    assert message == f"{path}: dataset 'a': '{key}' {expected}", message


def test_registry_path_that_is_a_directory_says_so(tmp_path):
    with pytest.raises(ConfigError, match=f"^{tmp_path}: is a directory, expected a registry file"):
        load_registry(tmp_path)
    path = tmp_path / "datasets.yaml"
    path.write_bytes(b"datasets:\n  \xff\xfe: 1\n")
    with pytest.raises(ConfigError, match=f"^{path}: registry file is not text"):
        load_registry(path)


def test_view_plans_are_read_and_custom_data_takes_its_formats_entry(tmp_path):
    path = _write(tmp_path, "datasets:\n"
                  "  real3d: {format: real3d, root: r, options: {preprocess: {cluster_eps: 2.0}},\n"
                  "           view_plans: {pointad-code: {variant: real3d, x_tilts: [0]}}}\n"
                  "  other: {format: mvtec3d, root: m}\n")
    registry = load_registry(path)
    assert registry["real3d"].view_plans == {"pointad-code": {"variant": "real3d", "x_tilts": [0]}}
    mine = resolve_dataset(format="real3d", root=tmp_path / "mine", registry=registry)
    assert mine.root == tmp_path / "mine" and mine.name == "mine"
    assert mine.options == {"preprocess": {"cluster_eps": 2.0}} and mine.view_plans == registry["real3d"].view_plans
    plain = resolve_dataset(format="eyecandies", root=tmp_path / "e", registry=registry)
    assert plain.options == {} and plain.view_plans == {}
    bad = _write(tmp_path, "datasets:\n  a: {format: mvtec3d, root: x, view_plans: [1]}\n")
    with pytest.raises(ConfigError, match="dataset 'a': 'view_plans' must be a mapping"):
        load_registry(bad)


def test_repository_registry_lengths_are_in_each_datasets_unit():
    """MVTec metres, raw Eyecandies Blender units, Real3D-AD millimetres: the same kind of length differs
    by orders of magnitude between them, and the synthetic twins share their dataset's numbers."""
    registry = load_registry()
    mvtec, eye, real = (registry[n].options["preprocess"] for n in ("mvtec3d", "eyecandies", "real3d"))
    assert mvtec["plane_distance"] == 0.005 and mvtec["cluster_eps"] < 0.05
    assert eye["background"] == "belt-box" and (eye["belt_height"], eye["belt_length"], eye["belt_half_width"]) == \
        (0.02, 1.8, 1.0)
    assert 0.5 < real["cluster_eps"] < 10
    for name, twin in (("eyecandies", "synthetic-eyecandies"), ("real3d", "synthetic-real3d"), ("mvtec3d", "synthetic")):
        assert registry[twin].options["preprocess"] == registry[name].options["preprocess"]
        assert registry[twin].view_plans == registry[name].view_plans


def _alias_bomb(levels: int, fan_out: int = 9) -> str:
    """A "billion laughs": level i lists level i-1 `fan_out` times, fan_out^levels strings in all."""
    lines = ["l0: &l0 [" + ", ".join(["lol"] * fan_out) + "]"]
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * fan_out) + "]" for i in range(1, levels)]
    return "\n".join(lines) + f"\ndatasets:\n  a: {{format: mvtec3d, root: x, classes: *l{levels - 1}}}\n"


@pytest.mark.parametrize("text, reason", [
    (_alias_bomb(9), "registry file expands its aliases to more than 1,000,000 nodes and characters (line 6)"),
    ('s: &s "' + "x" * 100_000 + '"\nl: [' + ", ".join(["*s"] * 20) + "]\ndatasets: {}\n",
     "registry file expands its aliases to more than 1,000,000 nodes and characters (line 2)"),
    ("datasets:\n  a: " + "[" * 10_000 + "]" * 10_000 + "\n", "registry file nests deeper than 32 levels (line 2)"),
    ("datasets:\n  a: " + "{a: " * 5_000 + "1" + "}" * 5_000 + "\n", "registry file nests deeper than 32 levels (line 2)"),
    ("\n".join(f"l{i}: &l{i} " + "[" * 20 + (f"*l{i - 1}" if i else "1") + "]" * 20 for i in range(3)) + "\ndatasets: {}\n",
     "registry file nests deeper than 32 levels with its aliases expanded (line 2)"),
    ("x: &a [1, *a]\ndatasets: {}\n", "registry file has an alias inside its own anchor (line 1)"),
    ("x: &a {b: [*a]}\ndatasets: {}\n", "registry file has an alias inside its own anchor (line 1)"),
    ("datasets: {}\n" + "#" * 300_000 + "\n",
     "registry file is larger than 256 KiB; a registry or a metadata file is a few KB"),
    ("datasets: *nope\n", "not valid YAML (found undefined alias 'nope')"),
])
def test_yaml_bombs_are_refused_in_one_line_before_anything_is_built(tmp_path, text, reason):
    """Aliases that expand past MAX_YAML_EXPANDED, nesting past MAX_YAML_DEPTH (directly, or through a chain
    of aliases), an alias inside its own anchor, a file past MAX_YAML_BYTES: each one line naming the file."""
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_registry(path)
    assert str(info.value) == f"{path}: {reason}"


def test_aliases_within_the_bounds_read_as_their_values(tmp_path):
    """The repository's registry shares its preprocess options and view plans by anchors; that keeps working,
    and a long wrong value is shown shortened."""
    path = _write(tmp_path, "p: &p {background: none}\nv: &v {pointad-code: {variant: real3d, x_tilts: [0]}}\n"
                  "datasets:\n  a: {format: real3d, root: r, options: {preprocess: *p}, view_plans: *v}\n"
                  "  b: {format: real3d, root: r, options: {preprocess: *p}}\n")
    registry = load_registry(path)
    assert registry["a"].options == registry["b"].options == {"preprocess": {"background": "none"}}
    assert registry["a"].view_plans == {"pointad-code": {"variant": "real3d", "x_tilts": [0]}}
    path = _write(tmp_path, f"datasets:\n  a: {{format: {'x' * 100_000}, root: r}}\n")
    with pytest.raises(ConfigError) as info:
        load_registry(path)
    assert len(str(info.value)) < 300 and "known formats: mvtec3d" in str(info.value)
