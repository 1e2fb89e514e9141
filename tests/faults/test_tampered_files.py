"""Tampered files: small files that claim huge or malformed contents (issue 21, items 8, 9, 10).

A few hundred bytes of YAML aliases, a `zarr.json` whose shape says 10^9 rows, store attributes of the wrong
type, a checkpoint claiming a model of width 10^9: each is refused in one line naming the file, before any
allocation the claim asks for. Where a regression would crash or exhaust the machine, the command runs as
its own process under a memory limit and a timeout, so the test fails instead.

The limit is on RLIMIT_DATA (heap and anonymous mappings: where numpy, torch and Python allocate), not
RLIMIT_AS: importing torch's CUDA build maps ~3.3 GB of address space it never touches, so an address
space limit of a few GiB stops the import itself. A healthy `pointad` command here takes under 1 GB of data.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import zipfile
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np
import open3d as o3d
import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pointad.eval.cli import eval_
from pointad.render.cli import render
from pointad.render.verify import store_summary, verify_store
from pointad.shared.errors import CheckpointMismatchError, ConfigError, StoreSchemaError
from pointad.shared.h5store import export_h5
from pointad.shared.registry import load_registry
from pointad.shared.store import open_store
from pointad.shared.store_schema import ARRAYS
from pointad.train.loop import TrainConfig, train
from pointad.train.model.checkpoint import load_checkpoint
from pointad.train.model.model_config import load_model_config
from pointad.train.model.prompts import PromptLearner

DATA_LIMIT = 3 * 2**30  # bytes of heap a tampered file may make a command take (a healthy one takes < 1 GB)
FUZZ = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def pointad(args, cwd: Path, timeout: float = 120, **env) -> subprocess.CompletedProcess:
    """`pointad ARGS` as its own process with at most DATA_LIMIT bytes of heap; TimeoutExpired past `timeout`."""
    def limit():
        resource.setrlimit(resource.RLIMIT_DATA, (DATA_LIMIT, DATA_LIMIT))
    return subprocess.run([sys.executable, "-c", "from pointad.shared.cli import main; main()", *map(str, args)],
                          cwd=cwd, env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout,
                          preexec_fn=limit)


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """The one `Error: ...` line of a command that failed as it should: exit 1, no traceback, no other error."""
    assert result.returncode == 1, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr and "MemoryError" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert len(errors[0]) < 400, errors[0]
    return errors[0]


# --- datasets.yaml (item 8) -------------------------------------------------------------------------------

def alias_bomb(levels: int, fan_out: int = 9) -> str:
    """Level i lists level i-1 `fan_out` times: fan_out^levels strings from a few hundred bytes."""
    lines = ["l0: &l0 [" + ", ".join(["lol"] * fan_out) + "]"]
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * fan_out) + "]" for i in range(1, levels)]
    return "\n".join(lines) + f"\ndatasets:\n  a: {{format: mvtec3d, root: x, classes: *l{levels - 1}}}\n"


@pytest.mark.parametrize("name, text, reason", [
    # 488 bytes: 3 GB and 59 s before the fix (the refusal repr()'d the whole value); one level more ran out of memory
    ("billion laughs", alias_bomb(9), "expands its aliases to more than 1,000,000 nodes and characters"),
    ("ten billion laughs", alias_bomb(10), "expands its aliases to more than 1,000,000 nodes and characters"),
    ("deep nesting", "datasets:\n  a: " + "[" * 100_000 + "]" * 100_000 + "\n", "nests deeper than 32 levels"),
    ("alias inside its anchor", "x: &a [1, *a]\ndatasets: {a: {format: mvtec3d, root: x, classes: *a}}\n",
     "has an alias inside its own anchor"),
])
def test_registry_bombs_are_one_line_in_bounded_memory(tmp_path, name, text, reason):
    """`pointad render datasets` with each bomb as POINTAD_REGISTRY: one line naming the file and the reason."""
    registry = tmp_path / "datasets.yaml"
    registry.write_text(text)
    line = one_error_line(pointad(["render", "datasets"], tmp_path, timeout=60, POINTAD_REGISTRY=str(registry)))
    assert line.startswith(f"Error: {registry}: registry file {reason}"), line


@st.composite
def yaml_bombs(draw) -> str:
    """Registries with chains of anchors (fan-out, levels), nesting, optional self-reference and long scalars."""
    fan_out, levels = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    depth, width = draw(st.integers(0, 60)), draw(st.integers(1, 2000))
    leaf = draw(st.sampled_from(["lol", "x" * width, "{format: mvtec3d, root: r}", "[cookie]"]))
    lines = ["l0: &l0 " + "[" * depth + leaf + "]" * depth]
    for i in range(1, levels):
        items = [f"*l{i - 1}"] * fan_out + ([f"*l{i}"] if draw(st.booleans()) and i == levels - 1 else [])
        lines.append(f"l{i}: &l{i} [" + ", ".join(items) + "]")
    where = draw(st.sampled_from(["classes", "options", "view_plans", "description", "entry"]))
    top = f"*l{levels - 1}"
    entry = top if where == "entry" else f"{{format: mvtec3d, root: x, {where}: {top}}}"
    return "\n".join(lines) + f"\ndatasets:\n  a: {entry}\n"


@FUZZ
@given(text=yaml_bombs())
def test_fuzzed_alias_and_depth_bombs_give_entries_or_one_line(tmp_path, text):
    """Whatever the aliases and nesting, the registry reader returns entries or one ConfigError line naming the
    file, short, with no RecursionError or MemoryError (each example is bounded by MAX_YAML_EXPANDED)."""
    path = tmp_path / "datasets.yaml"
    path.write_text(text)
    try:
        load_registry(path)
    except ConfigError as exc:
        message = str(exc)
        assert message.startswith(f"{path}: ") and "\n" not in message and len(message) < 400, message[:500]


# --- render stores (item 9) -------------------------------------------------------------------------------

def tampered(reference_store: Path, folder: Path, array: str, change) -> Path:
    """A copy of the reference store (6 rows, 3 views of 96 px, 9216 points, knn 8) whose `zarr.json` at
    `array` ("" for the root) was edited by `change(meta)`."""
    store = folder / "renders.zarr"
    if not store.exists():
        shutil.copytree(reference_store, store)
    document = store / array / "zarr.json"
    meta = json.loads(document.read_text())
    change(meta)
    document.write_text(json.dumps(meta))
    return store


def _rows(n):
    def change(meta):
        meta["shape"][0] = n
    return change


def _dim(axis, size):
    def change(meta):
        meta["shape"][axis] = meta["chunk_grid"]["configuration"]["chunk_shape"][axis] = size
    return change


def _chunks(*shape):
    def change(meta):
        meta["chunk_grid"]["configuration"]["chunk_shape"][: len(shape)] = shape
    return change


def _dtype(name, fill):
    def change(meta):
        meta["data_type"], meta["fill_value"] = name, fill
    return change


def _scalar(meta):
    meta["shape"], meta["chunk_grid"]["configuration"]["chunk_shape"], meta["dimension_names"] = [], [], []


ROWS_NOT_STORED = "array samples/sample_id says 1000000000 rows, but 244140 of the 244141 chunks holding them are not " \
                  "on disk; render into another --out"
SHAPE_CASES = {  # name: (array, change, the error after "Error: <store>: ", claims memory: run as a limited process)
    # every array 10^9 rows: `render info` grew past 9 GB before the fix (10^7 rows: 5.6 GB and 42 s)
    "every array claims 10^9 rows": ("*", _rows(10**9), ROWS_NOT_STORED, True),
    "the row count claims 10^9 rows": ("samples/sample_id", _rows(10**9), ROWS_NOT_STORED, True),
    "chunks of 10^9 rows": ("views/image", _chunks(10**9), "array views/image is chunked (1000000000, 3, 96, 96, 3), "
                            "schema says (1, 3, 96, 96, 3); render into another --out", True),
    "identity chunks of 10^9 rows": ("samples/dataset", _chunks(10**9), "array samples/dataset is chunked "
                                     "(1000000000,), schema says (1..65536,); render into another --out", True),
    "a view 97 px high": ("views/image", _dim(2, 97), "array views/image is (6, 3, 97, 96, 3) uint8, schema says "
                          "(N=6, 3, 96, 96, 3) uint8; render into another --out", False),
    "xyz in float64": ("points/xyz", _dtype("float64", 0.0), "array points/xyz is (6, 9216, 3) float64, schema says "
                       "(N=6, 9216, 3) float32; render into another --out", False),
    "chunks of 0 rows": ("points/knn", _chunks(0), "array points/knn is chunked (0, 9216, 8), schema says "
                         "(1, 9216, 8); render into another --out", False),
    "a 0-d row count": ("samples/sample_id", _scalar, "array samples/sample_id is () StringDType(), schema says "
                        "(N=0,) str; render into another --out", False),
}


def cli_error_line(result) -> str:
    """The one `Error: ...` line of a CliRunner result that failed as it should (exit 1, no exception)."""
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), (result.output, result.exception)
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.output
    return errors[0]


@pytest.mark.parametrize("case", SHAPE_CASES)
def test_tampered_shapes_are_one_line_naming_the_array(reference_store, tmp_path, case):
    """`render info` and `render verify` on each tampered store: exit 1 and one line naming the store and the
    array, before any column is read. Claims of memory run as processes limited to DATA_LIMIT."""
    array, change, error, claims_memory = SHAPE_CASES[case]
    store = tmp_path / "renders.zarr"
    shutil.copytree(reference_store, store)
    for target in [spec.path for spec in ARRAYS] if array == "*" else [array]:
        tampered(reference_store, tmp_path, target, change)
    for command in ("info", "verify"):
        if claims_memory:
            line = one_error_line(pointad(["render", command, store], tmp_path, timeout=120))
        else:
            line = cli_error_line(CliRunner().invoke(render, [command, str(store)]))
        assert line == f"Error: {store}: {error}", (command, line)


def test_rows_past_the_row_count_are_ignored_without_reading_them(reference_store, tmp_path):
    """A worker array claiming 10^9 rows (an append killed before `samples/sample_id` grew leaves more rows than
    N): the store reads its 6 rows, in bounded memory, and verifies clean."""
    store = tampered(reference_store, tmp_path, "views/image", _rows(10**9))
    result = pointad(["render", "info", store], tmp_path, timeout=120)
    assert result.returncode == 0 and f"{store}: pointad render store, schema v2, 6 samples" in result.stdout, \
        result.stderr[-3000:]
    assert verify_store(open_store(store), rerender=0) == []


def test_training_refuses_a_tampered_row_count_in_bounded_memory(reference_store, tmp_path):
    """`train run` opens the store as `render info` does (shared.open_store): the same line."""
    store = tampered(reference_store, tmp_path, "samples/sample_id", _rows(10**9))
    line = one_error_line(pointad(["train", "run", "--store", store, "--class", "cookie", "--model", "tiny",
                                   "--device", "cpu", "--out", tmp_path / "run"], tmp_path, timeout=180))
    assert line == f"Error: {store}: {ROWS_NOT_STORED}", line
    assert not (tmp_path / "run").exists()


def _attr(path, value):
    def change(meta):
        node = meta["attributes"]
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return change


ATTR_CASES = {  # name: (change of the root zarr.json, commands refusing it, the error after "Error: <store>: ")
    "point_sizes a list": (_attr(["render", "point_sizes"], [1, 2]), ("info", "verify"),
                           "store attribute render.point_sizes must be a mapping, got [1, 2]"),
    "a point size a string": (_attr(["render", "point_sizes"], {"synthetic-mvtec3d/cookie": "3"}), ("info", "verify"),
                              "store attribute render.point_sizes.synthetic-mvtec3d/cookie must be a finite number "
                              "> 0, got '3'"),
    "fov_degrees a string": (_attr(["camera", "fov_degrees"], "30"), ("info", "verify"),
                             "store attribute camera.fov_degrees must be a finite number in (0, 180), got '30'"),
    "fov_degrees 0": (_attr(["camera", "fov_degrees"], 0), ("info", "verify"),
                      "store attribute camera.fov_degrees must be a finite number in (0, 180), got 0"),
    "margin negative": (_attr(["camera", "margin"], -1.1), ("info", "verify"),
                        "store attribute camera.margin must be a finite number > 0, got -1.1"),
    "views 10^9": (_attr(["views"], 10**9), ("info", "verify"),
                   "store attribute views must be an integer in 1..64, got 1000000000"),
    "a long format": (_attr(["format"], "x" * 100_000), ("info", "verify"),
                      f"format '{'x' * 22}...{'x' * 23}', this version reads 'pointad-renders'; not a pointad render "
                      "store"),
    "renderer a list": (_attr(["render", "renderer"], ["splat"]), ("info", "verify"),
                        "store attribute 'render': 'renderer' must be str, got ['splat']"),
    "surface_tolerance a string": (_attr(["render", "surface_tolerance"], "a"), ("info", "verify"),
                                   "store attribute 'render': 'surface_tolerance' must be float, got 'a'"),
    "an unknown render option": (_attr(["render", "colour"], "red"), ("info", "verify"),
                                 "store attribute 'render': unknown key(s) ['colour']; known: ['angle_shift', "
                                 "'code_plan', 'downsample', 'fov_degrees', 'image_size', 'knn', 'light', 'margin', "
                                 "'masks', 'max_points', 'normals', 'point_size', 'point_sizes', 'renderer', 'supersample', "
                                 "'surface_tolerance', 'view_plan', 'views', 'visibility']"),
    "light unknown": (_attr(["render", "light"], "dim"), ("verify",),
                      "store attribute 'render': --light must be one of on, off, +, -, got 'dim'"),
}


@pytest.mark.parametrize("case", ATTR_CASES)
def test_tampered_attributes_are_one_line_naming_the_store(reference_store, tmp_path, case):
    """Store attributes of the wrong type or range: `render info` and `render verify` say so in one line
    (they crashed the verifier before: AttributeError on point_sizes, TypeError on fov_degrees)."""
    change, commands, error = ATTR_CASES[case]
    store = tampered(reference_store, tmp_path, "", change)
    for command in ("info", "verify"):
        result = CliRunner().invoke(render, [command, str(store)])
        if command in commands:
            assert cli_error_line(result) == f"Error: {store}: {error}", command
        else:
            assert result.exit_code == 0, result.output


def test_root_attributes_nested_past_the_recursion_limit_are_one_line(reference_store, tmp_path):
    store = tmp_path / "renders.zarr"
    shutil.copytree(reference_store, store)
    text = (store / "zarr.json").read_text()
    (store / "zarr.json").write_text(text.replace('"software": {', '"software": {"deep": ' + "[" * 100_000 +
                                                  "]" * 100_000 + ", ", 1))
    with pytest.raises(StoreSchemaError) as info:
        open_store(store)
    assert str(info.value).startswith(f"{store}: the store's zarr.json is unreadable (RecursionError: ")


@pytest.fixture(scope="module")
def reference_twin(reference_store, tmp_path_factory) -> Path:
    """The reference store's HDF5 twin (`render export`)."""
    out = tmp_path_factory.mktemp("twin") / "renders.h5"
    export_h5(reference_store, out)
    return out


def _twin_row_count(file: h5py.File, n: int) -> None:
    """samples/sample_id claiming n rows, only its first chunk written (as a crafted file would)."""
    values = file["samples/sample_id"].asstr()[:]
    del file["samples/sample_id"]
    array = file.create_dataset("samples/sample_id", shape=(n,), chunks=(4096,), dtype=h5py.string_dtype("utf-8"))
    array[: len(values)] = values.astype(object)


TWIN_CASES = {  # name: (change of the open file, the error after "Error: <file>: ")
    "a dataset attribute not JSON": (
        lambda f: f["samples/complete"].attrs.__setitem__("every_chunk_written_from_row", "{oops"),
        "array samples/complete: attribute every_chunk_written_from_row is not JSON text (JSONDecodeError: Expecting "
        "property name enclosed in double quotes: line 1 column 2 (char 1)); export the store again"),
    "a root attribute not JSON": (
        lambda f: f.attrs.__setitem__("camera", "{oops"),
        "root attributes are not JSON text (JSONDecodeError: Expecting property name enclosed in double quotes: "
        "line 1 column 2 (char 1)); not a twin written by 'render export'"),
    "a root attribute a number array": (
        lambda f: f.attrs.__setitem__("views", np.arange(3)),
        "root attributes are not JSON text (TypeError: the JSON object must be str, bytes or bytearray, not "
        "ndarray); not a twin written by 'render export'"),
    "point_sizes a list": (
        lambda f: f.attrs.__setitem__("render", json.dumps({**json.loads(f.attrs["render"]), "point_sizes": [3]})),
        "store attribute render.point_sizes must be a mapping, got [3]"),
    "an array of another length": (
        lambda f: f["points/xyz"].resize(7, axis=0),
        "array points/xyz has 7 rows, samples/sample_id 6; export the store again"),
    "the row count claims 10^9 rows": (
        lambda f: _twin_row_count(f, 10**9),
        "array samples/sample_id says 1000000000 rows, but 244140 of the 244141 chunks holding them are not on disk; "
        "export the store again"),
}


@pytest.mark.parametrize("case", TWIN_CASES)
def test_tampered_hdf5_twin_is_one_line_naming_the_file(reference_twin, tmp_path, case):
    """The HDF5 twin (`--store renders.h5` for train and eval) checked as the Zarr store is: `render info` on a
    tampered copy says what is wrong in one line (the claim of 10^9 rows as a process limited to DATA_LIMIT)."""
    change, error = TWIN_CASES[case]
    twin = tmp_path / "renders.h5"
    shutil.copy(reference_twin, twin)
    with h5py.File(twin, "r+") as file:
        change(file)
    if "10^9" in case:
        line = one_error_line(pointad(["render", "info", twin], tmp_path, timeout=120))
    else:
        line = cli_error_line(CliRunner().invoke(render, ["info", str(twin)]))
    assert line == f"Error: {twin}: {error}", line


# --- checkpoints (item 10) --------------------------------------------------------------------------------

MVTEC = "synthetic-mvtec3d"


@pytest.fixture(scope="module")
def tiny_run(eval_store, tmp_path_factory) -> Path:
    """A checkpoint of ours: one epoch of the tiny model on the cookie rows of the eval store."""
    folder = tmp_path_factory.mktemp("tampered-run")
    config = TrainConfig(store=str(eval_store), class_name="cookie", dataset=MVTEC, model="tiny", epochs=1,
                         batch_size=4)
    train(config, folder / "run")
    return folder / "run" / "checkpoints" / "epoch_1.pt"


def _claim(prompts, **sizes):
    """Prompt settings claiming `sizes` with tensors that claim the same shapes without holding them."""
    n_ctx, width = sizes.get("n_ctx", prompts["n_ctx"]), sizes.get("width", prompts["width"])
    prompts.update(sizes)
    prompts["ctx"] = torch.zeros(1).expand(2, n_ctx, width)  # saved as one float with stride 0
    prompts["deep"] = torch.zeros(1).expand(prompts["depth"] - 1, prompts["n_pos"], width)


def _meta(prompts):
    prompts["width"] = 10**9
    prompts["ctx"] = torch.empty(2, prompts["n_ctx"], 10**9, device="meta")
    prompts["deep"] = torch.empty(prompts["depth"] - 1, prompts["n_pos"], 10**9, device="meta")


def _bomb(levels=12, fan_out=9):
    """Nested lists sharing one list per level: fan_out^levels entries, a few hundred bytes pickled."""
    value = ["lol"] * fan_out
    for _ in range(levels):
        value = [value] * fan_out
    return value


def _set(key, value):
    def change(payload):
        target = payload
        for part in key[:-1]:
            target = target[part]
        target[key[-1]] = value(target) if callable(value) else value
    return change


# name: (change of the payload, the reason after "<path>: " (or its start and end), made a claim of memory
# before the fix)
CHECKPOINT_CASES = {
    "prompt width 10^9 (96 GB)": (lambda p: _claim(p["prompts"], width=10**9),
                                  "not a readable pointad checkpoint: prompts.ctx is a (2, 12, 1000000000) tensor over "
                                  "4 bytes of storage (overlapping elements)", True),
    "10^8 learnable words (51 GB)": (lambda p: _claim(p["prompts"], n_ctx=10**8),
                                          "not a readable pointad checkpoint: prompts.ctx is a (2, 100000000, 64) "
                                          "tensor over 4 bytes of storage (overlapping elements)", True),
    "settings alone claim width 10^9": (_set(["prompts", "width"], 10**9),
                                        "damaged pointad checkpoint (prompts.ctx is (2, 12, 64) torch.float32, its "
                                        "settings say (2, 12, 1000000000) torch.float32)", True),
    "meta tensors of width 10^9": (lambda p: _meta(p["prompts"]),
                                   "not a readable pointad checkpoint: prompts.ctx is a tensor on device meta, whose "
                                   "values the file does not hold", True),
    # ModelConfig's bounds (train/model/model_config.py) say the range: only the start and the value are ours
    "a model of text width 10^9": (_set(["model", "open_clip_config", "text_cfg", "width"], 10**9),
                                   ("model config: 'open_clip_config.text_cfg.width' must be ", "got 1000000000"), True),
    "a sparse ctx": (_set(["prompts", "ctx"], lambda p: p["ctx"].to_sparse()),
                     "not a readable pointad checkpoint: prompts.ctx is a sparse_coo tensor; a data-only file holds "
                     "dense tensors", False),
    "ctx in float64": (_set(["prompts", "ctx"], lambda p: p["ctx"].double()),
                       "damaged pointad checkpoint (prompts.ctx is (2, 12, 64) torch.float64, its settings say "
                       "(2, 12, 64) torch.float32)", False),
    "NaN in ctx": (_set(["prompts", "ctx"], lambda p: p["ctx"].index_fill(2, torch.tensor([5]), float("nan"))),
                   "damaged pointad checkpoint (prompts.ctx holds NaN or infinite values)", False),
    "inf in Adam's state": (_set(["optimizer", "state", 0, "exp_avg"],
                                 lambda s: s["exp_avg"].index_fill(2, torch.tensor([0]), float("inf"))),
                            "damaged pointad checkpoint (optimizer.state.0.exp_avg holds NaN or infinite values)", False),
    "depth beyond the text layers": (lambda p: p["prompts"].update(depth=9, deep=torch.zeros(8, 4, 64)),
                                     "prompts of depth 9 do not fit its model tiny (random weights) (4 text layers)",
                                     False),
    "an epoch as text": (_set(["epoch"], "1"), "damaged pointad checkpoint ('epoch' is missing or not int)", False),
    "a seed as text": (_set(["config", "seed"], "abc"), "damaged pointad checkpoint (config 'seed' is 'abc')", False),
    "prompts of another variant": (_set(["prompts", "variant"], ["coop"]),
                                   "damaged pointad checkpoint (prompt variant list; known: agnostic, coop)", False),
    "a vision tower that is a list": (_set(["model", "open_clip_config", "vision_cfg"], []),
                                      "damaged pointad checkpoint (model config 'open_clip_config.vision_cfg' is list, "
                                      "not a mapping)", False),
    "a model config missing keys": (_set(["model"], {"name": "tiny"}),
                                    "model config: missing key(s) ['label', 'open_clip_name']", False),
    "the ViT-L model with tiny prompts": (_set(["model"], lambda p: load_model_config("vit-l-14-336").to_dict()),
                                          "prompts of width 64 do not fit its model ViT-L-14-336 (OpenAI weights) "
                                          "(text width 768)", False),
    "a config holding itself": (_set(["config", "me"], lambda c: c),
                                "not a readable pointad checkpoint: config holds a reference to itself", False),
    "a config of shared lists": (_set(["config", "bomb"], _bomb()),
                                 "not a readable pointad checkpoint: config.bomb.0.0.0.0.0.0 holds more than 1,000,000 "
                                 "objects with its shared references expanded", False),
}


def assert_reason(message: str, start: str, reason) -> None:
    """`message` is `start` + reason, or for a (first, last) pair starts with start + first and ends with last."""
    if isinstance(reason, tuple):
        assert message.startswith(start + reason[0]) and message.endswith(reason[1]), message
    else:
        assert message == start + reason, message


def tampered_checkpoint(tiny_run: Path, folder: Path, change) -> Path:
    payload = torch.load(tiny_run, weights_only=True)
    change(payload)
    path = folder / "epoch_1.pt"
    torch.save(payload, path)
    return path


def test_the_tiny_run_loads_and_its_settings_are_the_tampered_cases(tiny_run):
    """The messages below name n_ctx 12, width 64, depth 4: the tiny run's own settings."""
    prompts = load_checkpoint(tiny_run)["prompts"]
    assert (prompts["n_ctx"], prompts["width"], prompts["depth"], prompts["n_pos"]) == (12, 64, 4, 4)


@pytest.mark.parametrize("case", CHECKPOINT_CASES)
def test_tampered_checkpoints_are_one_line_naming_the_file(tiny_run, tmp_path, case):
    """Each tampered copy of our own checkpoint, read by `load_checkpoint` (what train --resume, eval report and
    detect call): one CheckpointMismatchError line naming the file."""
    change, reason, _ = CHECKPOINT_CASES[case]
    path = tampered_checkpoint(tiny_run, tmp_path, change)
    with pytest.raises(CheckpointMismatchError) as info:
        load_checkpoint(path)
    assert_reason(str(info.value), f"{path}: ", reason)


@pytest.mark.parametrize("case", [name for name, (_, _, claims) in CHECKPOINT_CASES.items() if claims])
def test_checkpoints_claiming_memory_stop_detect_in_bounded_memory(tiny_run, tmp_path, case):
    """`pointad detect` given each checkpoint that claimed tens of GB before the fix (PromptLearner.from_state
    allocated what the settings said), as a process limited to DATA_LIMIT: one line, nothing written."""
    change, reason, _ = CHECKPOINT_CASES[case]
    path = tampered_checkpoint(tiny_run, tmp_path, change)
    cloud = tmp_path / "cloud.ply"
    points = np.random.default_rng(0).normal(size=(500, 3))
    o3d.io.write_point_cloud(str(cloud), o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points)))
    line = one_error_line(pointad(["detect", cloud, "--checkpoint", path, "--device", "cpu", "--views", "1"],
                                  tmp_path, timeout=180))
    assert_reason(line, f"Error: {path}: ", reason)
    assert not (tmp_path / "cloud_scores").exists()


def test_eval_report_refuses_a_tampered_checkpoint_in_one_line(tiny_run, eval_store, tmp_path):
    path = tampered_checkpoint(tiny_run, tmp_path, CHECKPOINT_CASES["NaN in ctx"][0])
    result = CliRunner().invoke(eval_, ["report", "--store", str(eval_store), "--dataset", MVTEC, "--checkpoints",
                                        str(path), "--device", "cpu", "--out", str(tmp_path / "report")])
    assert cli_error_line(result) == f"Error: {path}: damaged pointad checkpoint (prompts.ctx holds NaN or infinite " \
                                     "values)"


def test_a_deflated_checkpoint_unpacking_far_beyond_its_size_is_refused_unread(tiny_run, tmp_path):
    """A zip entry compressed 1000:1 would make a small file a large allocation: refused before torch reads it."""
    big = tmp_path / "big.pt"
    torch.save({**torch.load(tiny_run, weights_only=True), "pad": torch.zeros(10**7)}, big)
    path = tmp_path / "deflated.pt"
    with zipfile.ZipFile(big) as old, zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as new:
        for name in old.namelist():
            new.writestr(name, old.read(name))
    with pytest.raises(CheckpointMismatchError) as info:
        load_checkpoint(path)
    unpacked = sum(i.file_size for i in zipfile.ZipFile(path).infolist())
    assert str(info.value) == f"{path}: not a readable pointad checkpoint: its entries unpack to {unpacked:,} bytes " \
                              f"from {path.stat().st_size:,}; torch.save stores tensors uncompressed"


# --- fuzzing: tampered stores and checkpoints -----------------------------------------------------------

@contextmanager
def heap_limit(extra: int = DATA_LIMIT):
    """This process's heap limited to what it holds now plus `extra` while the block runs (RLIMIT_DATA's soft
    limit, restored after): an unbounded allocation in fuzzed input is a MemoryError, not a dead machine."""
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    status = Path("/proc/self/status").read_text()
    now = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmData:"))) * 1024
    limit = now + extra if hard == resource.RLIM_INFINITY else min(hard, now + extra)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


def one_line(exc: BaseException, start: str) -> None:
    message = str(exc)
    assert message.startswith(start) and "\n" not in message and len(message) < 500, message[:1000]


SIZES = st.sampled_from([0, 1, 2, 5, 6, 7, 8, 64, 96, 97, 4096, 65537, 2**31 - 1, 10**9, 10**12])
JSON = st.recursive(st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=False) |
                    st.text(max_size=20), lambda inner: st.lists(inner, max_size=4) |
                    st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
ATTR_KEYS = [("views",), ("image_size",), ("max_points",), ("knn",), ("camera", "fov_degrees"), ("camera", "margin"),
             ("render", "point_sizes"), ("render", "point_size"), ("render", "renderer"), ("render", "code_plan"),
             ("render", "visibility"), ("render", "surface_tolerance"), ("failures",), ("view_plan",), ("software",)]


@st.composite
def store_tampering(draw):
    """(array or "" for the root, change of its zarr.json): a shape, chunk or dtype of an array, or an attribute."""
    if draw(st.booleans()):
        key, value = draw(st.sampled_from(ATTR_KEYS)), draw(JSON)
        return "", _attr(list(key), value)
    spec = draw(st.sampled_from(ARRAYS))
    axis = draw(st.integers(0, len(spec.row)))
    kind, size = draw(st.sampled_from(["shape", "chunks", "dtype"])), draw(SIZES)
    dtype = draw(st.sampled_from(["bool", "uint8", "int16", "int32", "float16", "float32", "float64", "string"]))

    def change(meta):
        if kind == "shape":
            meta["shape"][axis] = size
        elif kind == "chunks":
            meta["chunk_grid"]["configuration"]["chunk_shape"][axis] = size
        else:
            meta["data_type"], meta["fill_value"] = dtype, "" if dtype == "string" else False if dtype == "bool" else 0
    return spec.path, change


@FUZZ
@given(tampering=store_tampering())
def test_fuzzed_store_metadata_opens_or_is_one_line(reference_store, tmp_path, tampering):
    """A store with one shape, chunk shape, dtype or attribute changed at random: opening, `render info`'s
    summary and verifying (no re-render) either work or give one StoreSchemaError line naming the store,
    within DATA_LIMIT of heap."""
    store = tmp_path / "renders.zarr"
    if store.exists():
        shutil.rmtree(store)
    array, change = tampering
    tampered(reference_store, tmp_path, array, change)
    with heap_limit():
        try:
            opened = open_store(store)
            store_summary(opened)
            verify_store(opened, rerender=0)
        except StoreSchemaError as exc:
            one_line(exc, f"{store}: ")


@st.composite
def checkpoint_tampering(draw):
    """A change of one entry of a checkpoint: a prompt setting, a tensor's shape, dtype, layout or values, a
    model or run config value, or any entry replaced by another value."""
    kind = draw(st.sampled_from(["setting", "tensor", "model", "config", "entry"]))
    if kind == "setting":
        key, value = draw(st.sampled_from(["n_ctx", "depth", "n_pos", "width"])), draw(SIZES)
        return lambda p: p["prompts"].update({key: value})
    if kind == "tensor":
        name = draw(st.sampled_from(["ctx", "deep"]))
        shape = tuple(draw(st.lists(st.integers(0, 16), min_size=0, max_size=4)))
        how = draw(st.sampled_from(["zeros", "expand", "sparse", "meta", "nan", "float64", "int64"]))
        made = {"zeros": lambda: torch.zeros(shape), "expand": lambda: torch.zeros(1).expand(*shape, 10**9),
                "sparse": lambda: torch.zeros(shape).to_sparse(), "meta": lambda: torch.empty(*shape, 10**9, device="meta"),
                "nan": lambda: torch.full(shape, float("nan")), "float64": lambda: torch.zeros(shape, dtype=torch.float64),
                "int64": lambda: torch.zeros(shape, dtype=torch.int64)}[how]
        return lambda p: p["prompts"].update({name: made()})
    if kind == "model":
        key = draw(st.sampled_from(["image_size", "dual_path_blocks", "tap_layers", "open_clip_config", "quick_gelu"]))
        value = draw(JSON | SIZES)
        return lambda p: p["model"].update({key: value})
    if kind == "config":
        key, value = draw(st.sampled_from(["seed", "class_name", "dataset", "layers"])), draw(JSON)
        return lambda p: p["config"].update({key: value})
    key = draw(st.sampled_from(["epoch", "prompts", "config", "model", "optimizer", "render", "metrics",
                                "store_fingerprint"]))
    value = draw(JSON)
    return lambda p: p.update({key: value})


@FUZZ
@given(change=checkpoint_tampering())
def test_fuzzed_checkpoints_load_consistently_or_are_one_line(tiny_run, tmp_path, change):
    """A copy of our checkpoint with one entry changed at random: `load_checkpoint` refuses it in one
    CheckpointMismatchError line naming the file, or its prompts build (PromptLearner.from_state) with exactly
    the stored values, within DATA_LIMIT of heap."""
    path = tampered_checkpoint(tiny_run, tmp_path, change)
    with heap_limit():
        try:
            payload = load_checkpoint(path)
        except CheckpointMismatchError as exc:
            one_line(exc, f"{path}: ")
            return
        learner = PromptLearner.from_state(payload["prompts"], source=str(path))
        assert torch.equal(learner.ctx.detach(), payload["prompts"]["ctx"])
        assert torch.equal(learner.deep.detach(), payload["prompts"]["deep"])


def test_eval_report_refuses_a_tampered_row_count_in_bounded_memory(tiny_run, eval_store, tmp_path):
    """`eval report` opens its store as `render info` does (shared.open_store): the same line, as a process
    limited to DATA_LIMIT, and no report written."""
    store = tampered(eval_store, tmp_path, "samples/sample_id", _rows(10**9))
    line = one_error_line(pointad(["eval", "report", "--store", store, "--dataset", MVTEC, "--checkpoints", tiny_run,
                                   "--device", "cpu", "--out", tmp_path / "report"], tmp_path, timeout=180))
    assert line == f"Error: {store}: {ROWS_NOT_STORED}", line
    assert not (tmp_path / "report").exists()
