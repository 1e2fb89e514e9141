"""strict.from_dict: mappings to dataclasses, refusing unknown keys, missing keys and wrong JSON types."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pointad.shared.errors import ConfigError, PointADError, StoreSchemaError
from pointad.shared.strict import from_dict


@dataclass(frozen=True, kw_only=True)
class Inner:
    size: int
    scale: float = 1.0


@dataclass(frozen=True, kw_only=True)
class Everything:
    """One field per annotation kind the helper supports."""

    name: str
    count: int
    ratio: float
    flag: bool
    note: str | None = None
    root: Path | None = None
    ids: tuple[int, ...] = ()
    pair: tuple[float, float] = (0.0, 1.0)
    turns: tuple[tuple[str, float], ...] = ()
    tags: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    mode: Literal["fast", "exact"] = "fast"
    inner: Inner = field(default_factory=lambda: Inner(size=1))
    maybe_inner: Inner | None = None
    anything: Any = None

    def __post_init__(self):
        if self.count < 0:
            raise ValueError(f"'count' must be >= 0, got {self.count}")
        if self.name == "reserved":
            raise PointADError("the name 'reserved' is taken")


GOOD = Everything(name="a", count=3, ratio=0.5, flag=True, note="n", root=Path("data/x"), ids=(1, 2),
                  pair=(-1.0, 2.5), turns=(("x", 45.0), ("y", -90.0)), tags=["t"], extra={"k": [1, {"z": None}]},
                  weights={"w": 2.0}, mode="exact", inner=Inner(size=4, scale=0.25), maybe_inner=Inner(size=5),
                  anything=[1, "two"])
REQUIRED = {"name": "a", "count": 3, "ratio": 0.5, "flag": True}


def _json(obj) -> dict:
    """What a JSON file written from `obj` reads back as: tuples become lists, paths strings."""
    return json.loads(json.dumps(asdict(obj), default=str))


def _refused(data, source="cfg.json", **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        from_dict(Everything, data, source, **kwargs)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def test_json_round_trip_gives_an_equal_object_with_the_annotated_types():
    again = from_dict(Everything, _json(GOOD), "cfg.json")
    assert again == GOOD
    assert isinstance(again.ids, tuple) and isinstance(again.turns[0], tuple) and isinstance(again.pair, tuple)
    assert isinstance(again.tags, list) and isinstance(again.root, Path) and isinstance(again.inner, Inner)


def test_defaults_fill_absent_keys_and_ints_become_floats():
    made = from_dict(Everything, {**REQUIRED, "ratio": 2, "pair": [1, 2], "weights": {"w": 3}}, "cfg.json")
    assert made == Everything(**{**REQUIRED, "ratio": 2.0}, pair=(1.0, 2.0), weights={"w": 3.0})
    assert type(made.ratio) is float and all(type(v) is float for v in (*made.pair, made.weights["w"]))


def test_not_a_mapping_is_refused():
    assert _refused([1, 2]) == "cfg.json: expected a mapping, got list"


def test_unknown_key_is_named_with_the_known_ones():
    message = _refused({**REQUIRED, "colour": 1})
    assert message == ("cfg.json: unknown key(s) ['colour']; known: ['anything', 'count', 'extra', 'flag', "
                       "'ids', 'inner', 'maybe_inner', 'mode', 'name', 'note', 'pair', 'ratio', 'root', 'tags', "
                       "'turns', 'weights']")


def test_missing_required_keys_are_named():
    assert _refused({"name": "a", "ratio": 1.0}) == "cfg.json: missing key(s) ['count', 'flag']"


@pytest.mark.parametrize("change, message", [
    ({"count": True}, "'count' must be int, got True"),
    ({"count": 2.0}, "'count' must be int, got 2.0"),
    ({"ratio": "0.5"}, "'ratio' must be float, got '0.5'"),
    ({"ratio": False}, "'ratio' must be float, got False"),
    ({"flag": 1}, "'flag' must be true or false, got 1"),
    ({"name": 7}, "'name' must be str, got 7"),
    ({"note": 3}, "'note' must be str or null, got 3"),
    ({"root": ["x"]}, "'root' must be a path or null, got ['x']"),
    ({"ids": "12"}, "'ids' must be a list of int, got '12'"),
    ({"ids": [1, "2"]}, "'ids[1]' must be int, got '2'"),
    ({"pair": [1.0]}, "'pair' must be a list [float, float], got [1.0]"),
    ({"pair": [1.0, 2.0, 3.0]}, "'pair' must be a list [float, float], got [1.0, 2.0, 3.0]"),
    ({"turns": [["x", 45.0, 1.0]]}, "'turns[0]' must be a list [str, float], got ['x', 45.0, 1.0]"),
    ({"turns": [["x", "far"]]}, "'turns[0][1]' must be float, got 'far'"),
    ({"tags": [None]}, "'tags[0]' must be str, got None"),
    ({"extra": [1]}, "'extra' must be a mapping, got [1]"),
    ({"weights": {"w": "x"}}, "'weights.w' must be float, got 'x'"),
    ({"weights": {1: 2.0}}, "'weights' keys must be str, got 1"),
    ({"mode": "slow"}, "'mode' must be one of fast, exact, got 'slow'"),
    ({"inner": 5}, "'inner' must be a mapping, got 5"),
    ({"inner": {"size": "big"}}, "'inner.size' must be int, got 'big'"),
    ({"inner": {"size": 1, "colour": 2}}, "'inner': unknown key(s) ['colour']; known: ['scale', 'size']"),
    ({"inner": {}}, "'inner': missing key(s) ['size']"),
    ({"maybe_inner": {"size": 1.5}}, "'maybe_inner.size' must be int, got 1.5"),
    ({"maybe_inner": "no"}, "'maybe_inner' must be a mapping or null, got 'no'"),
])
def test_each_wrong_type_is_one_line_naming_the_key_path(change, message):
    assert _refused({**REQUIRED, **change}) == f"cfg.json: {message}"


def test_a_fixed_length_tuple_takes_exactly_its_length():
    """tuple[float, float] is a pair: a list one longer is refused, not cut to its first two items."""
    for value in ([0.5, 1.5, 2.5], [0.5, 1.5, 2.5, 3.5]):
        assert _refused({**REQUIRED, "pair": value}) == f"cfg.json: 'pair' must be a list [float, float], got {value}"
    assert from_dict(Everything, {**REQUIRED, "pair": [0.5, 1.5]}, "cfg.json").pair == (0.5, 1.5)
    # a real record: the view plan's pre-rotations are (axis, degrees) pairs
    from pointad.render.view_plan import CodePlan
    with pytest.raises(ConfigError, match=r"^plan: 'pre_rotation\[0\]' must be a list \[str, float\], got "
                                          r"\['x', 45, 90\]$"):
        CodePlan.from_dict({"pre_rotation": [["x", 45, 90]]}, "plan")


def test_long_values_are_shortened_in_the_message():
    message = _refused({**REQUIRED, "name": ["x" * 500]})
    assert message.startswith("cfg.json: 'name' must be str, got ['xxx") and message.endswith("...")
    assert len(message) < 120


def test_class_checks_name_the_source_and_own_errors_pass_unchanged():
    assert _refused({**REQUIRED, "count": -1}) == "cfg.json: 'count' must be >= 0, got -1"
    with pytest.raises(PointADError) as info:
        from_dict(Everything, {**REQUIRED, "name": "reserved"}, "cfg.json")
    assert type(info.value) is PointADError and str(info.value) == "the name 'reserved' is taken"


def test_error_class_and_given_fields():
    with pytest.raises(StoreSchemaError, match=r"^store.zarr: 'count' must be int, got 'x'$"):
        from_dict(Everything, {**REQUIRED, "count": "x"}, "store.zarr", error=StoreSchemaError)
    data = {k: v for k, v in REQUIRED.items() if k != "name"}
    assert from_dict(Everything, data, "cfg.json", given={"name": "b"}).name == "b"
    assert _refused(REQUIRED, given={"name": "b"}).startswith("cfg.json: unknown key(s) ['name']; known: [")


def test_an_annotation_the_helper_does_not_know_is_a_programming_error():
    @dataclass
    class Odd:
        values: set[int]

    with pytest.raises(TypeError, match="unsupported annotation"):
        from_dict(Odd, {"values": [1]}, "cfg.json")


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
                     max_leaves=8)
_KEYS = st.sampled_from([*_json(GOOD), "junk"])


@settings(max_examples=300, deadline=None)
@given(changes=st.dictionaries(_KEYS, _JSON, max_size=4), drop=st.sets(_KEYS, max_size=2))
@pytest.mark.slow
def test_any_json_gives_an_object_or_a_config_error(changes, drop):
    """Random JSON in place of some values: never another exception, and what is accepted round-trips."""
    data = {k: v for k, v in {**_json(GOOD), **changes}.items() if k not in drop}
    try:
        made = from_dict(Everything, data, "cfg.json")
    except ConfigError as exc:
        assert str(exc).startswith("cfg.json: ") and "\n" not in str(exc)
        return
    assert from_dict(Everything, _json(made), "cfg.json") == made
