"""Hostile weights and checkpoints: no byte of a data file is ever run (issue 9, items 7 and 2).

Each hostile file is armed (an unrestricted loader does run its payload: `torch.jit.load` or `pickle.loads`
creates the marker file) and then given to our readers, in this process and as `pointad` commands run
as real processes: the marker never appears and the answer is one line naming the file.
"""

from __future__ import annotations

import builtins
import os
import pickle
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import open3d as o3d
import pytest
import torch
from click.testing import CliRunner

from pointad.eval.cli import eval_
from pointad.shared.errors import CheckpointMismatchError
from pointad.train.model.backbone import create_clip
from pointad.train.model.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, load_checkpoint
from pointad.train.model.model_config import load_model_config
from pointad.train.model.prompts import PromptLearner
from pointad.train.model.torchscript import read_torchscript_state_dict
from pointad.train.model.weights import read_state_dict

MVTEC = "synthetic-mvtec3d"


# --- making archives --------------------------------------------------------------------------------------

class Toy(torch.nn.Module):
    """Parameters, buffers (an int64 one), a bias-less layer, a non-contiguous float16 parameter, nesting."""

    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(3)
        self.lin = torch.nn.Linear(3, 2, bias=False)
        self.sub = torch.nn.Sequential(torch.nn.LayerNorm(2), torch.nn.Sequential(torch.nn.Linear(2, 2)))
        self.bn = torch.nn.BatchNorm1d(2)
        self.p = torch.nn.Parameter(torch.randn(3, 2, generator=generator).t()[:, 1:].half())
        self.register_buffer("steps", torch.arange(4, dtype=torch.int64))
        self.bn.running_mean.uniform_(generator=generator)

    def forward(self, x):
        return self.bn(self.sub(self.lin(x))) * self.p.float().sum() + self.steps.sum()


class SetstateMarker(torch.nn.Module):
    """Its TorchScript `__setstate__` creates the file named in its state (torch.from_file, shared=True)."""

    def __init__(self, marker: str):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(2))
        self.marker = marker

    def forward(self, x):
        return x * self.weight

    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, str, bool]:
        return (self.weight, self.marker, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, str, bool]) -> None:
        self.marker = state[1]
        self.training = state[2]
        self.weight = state[0] + 0 * torch.from_file(state[1], True, 2)


class _Call:
    """Unpickling this calls fn(*args)."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _jit_save(module, path: Path, trace_input=None) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(module) if trace_input is None else torch.jit.trace(module, trace_input)
        torch.jit.save(scripted, str(path))
    return path


def _jit_load(path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.load(str(path))


def _replace_member(source: Path, target: Path, suffix: str, data: bytes) -> Path:
    """Copy the zip `source` to `target` with the member ending in `suffix` replaced by `data`."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        names = [n for n in old.namelist() if n.endswith(suffix)]
        assert len(names) == 1, names
        for name in old.namelist():
            new.writestr(name, data if name == names[0] else old.read(name))
    return target


def _payloads(marker: Path) -> dict[str, bytes]:
    """Protocol-2 pickles (the TorchScript data.pkl protocol) that create `marker` when unpickled."""
    return {"os.system": pickle.dumps(_Call(os.system, f"touch '{marker}'"), protocol=2),
            "builtins.exec": pickle.dumps(_Call(builtins.exec, f"open({str(marker)!r}, 'w').close()"), protocol=2)}


@pytest.fixture(scope="module")
def tiny_archive(tmp_path_factory):
    """The tiny CLIP model (seed 5) as a real TorchScript archive."""
    return _jit_save(create_clip(load_model_config("tiny"), seed=5), tmp_path_factory.mktemp("ts") / "tiny.pt")


def _hostile_archives(folder: Path, tiny_archive: Path, marker: Path) -> dict[str, Path]:
    archives = {"__setstate__ code": _jit_save(SetstateMarker(str(marker)), folder / "setstate.pt")}
    for name, payload in _payloads(marker).items():
        archives[f"data.pkl calls {name}"] = _replace_member(tiny_archive, folder / f"{name}.pt", "/data.pkl", payload)
    return archives


# --- the restricted reader gives exactly the state dict ----------------------------------------------------

@pytest.mark.parametrize("kind", ["script", "trace"])
def test_torchscript_archive_reads_as_the_modules_state_dict(tmp_path, kind):
    module = Toy().eval()
    path = _jit_save(module, tmp_path / "toy.pt", None if kind == "script" else torch.randn(4, 3))
    with zipfile.ZipFile(path) as archive:
        state = read_torchscript_state_dict(archive)
    expected = module.state_dict()
    assert list(state) == list(expected)  # names and nn.Module's order: parameters, buffers, submodules
    for name, value in expected.items():
        assert state[name].dtype == value.dtype and state[name].shape == value.shape, name
        assert torch.equal(state[name], value), name
    assert "lin.bias" not in state and state["p"].dtype == torch.float16 and state["steps"].dtype == torch.int64


def test_tiny_clip_archive_reads_like_the_model(tiny_archive):
    state = read_state_dict(tiny_archive)
    reference = _jit_load(tiny_archive).state_dict()
    assert list(state) == list(reference)
    different = [name for name, value in reference.items() if not torch.equal(state[name], value)]
    assert not different, different[:3]


def test_archive_code_is_parsed_never_run(tmp_path):
    """Python appended to a class file would run if the code were executed; the reader only parses it."""
    good = _jit_save(Toy(), tmp_path / "toy.pt")
    marker = tmp_path / "MARKER"
    with zipfile.ZipFile(good) as archive:
        member = next(n for n in archive.namelist() if n.endswith(".py") and b"class Toy(" in archive.read(n))
        code = archive.read(member)
    armed = _replace_member(good, tmp_path / "armed.pt", member,
                            code + f"\nimport os\nos.system(\"touch '{marker}'\")\n".encode())
    with zipfile.ZipFile(armed) as archive:
        state = read_torchscript_state_dict(archive)
    assert list(state) == list(Toy().state_dict())
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["short storage", "missing storage", "foreign pickle"])
def test_damaged_archives_are_refused_with_a_reason(tmp_path, damage):
    good = _jit_save(Toy(), tmp_path / "toy.pt")
    path = tmp_path / "damaged.pt"
    if damage == "short storage":
        _replace_member(good, path, "/data/0", b"\0" * 3)
        reason = "holds 3 bytes, its record says"
    elif damage == "missing storage":
        with zipfile.ZipFile(good) as old, zipfile.ZipFile(path, "w") as new:
            for name in old.namelist():
                if not name.endswith("/data/1"):
                    new.writestr(name, old.read(name))
        reason = "data/1 is missing"
    else:
        _replace_member(good, path, "/data.pkl", pickle.dumps({"weight": [1.0]}, protocol=2))
        reason = "data.pkl holds dict, not a TorchScript module"
    with pytest.raises(CheckpointMismatchError) as info:
        read_state_dict(path)
    message = str(info.value)
    assert message.startswith(f"{path}: cannot read CLIP weights: ") and reason in message, message
    assert "\n" not in message


def test_cut_and_flipped_archives_give_only_our_error(tmp_path):
    """Truncations and random bytes, of the whole archive and of its data.pkl alone: each read either gives
    the state dict or one CheckpointMismatchError line; nothing else escapes."""
    good = _jit_save(Toy(), tmp_path / "toy.pt")
    whole = good.read_bytes()
    with zipfile.ZipFile(good) as archive:
        pickled = archive.read(next(n for n in archive.namelist() if n.endswith("/data.pkl")))
    rng = np.random.default_rng(4)
    path = tmp_path / "fuzzed.pt"
    for case in range(120):
        source = bytearray(whole if case < 60 else pickled)
        if case % 2:
            source = source[: rng.integers(len(source))]
        else:
            for position in rng.integers(len(source), size=rng.integers(1, 6)):
                source[int(position)] = int(rng.integers(256))
        if case < 60:
            path.write_bytes(bytes(source))
        else:
            _replace_member(good, path, "/data.pkl", bytes(source))
        try:
            read_state_dict(path)
        except CheckpointMismatchError as exc:
            assert str(exc).startswith(f"{path}: cannot read CLIP weights: ") and "\n" not in str(exc), str(exc)


# --- hostile weights ------------------------------------------------------------------------------------

def test_hostile_archives_are_armed(tmp_path, tiny_archive):
    """The payloads work: torch.jit.load runs the archive's __setstate__, pickle.loads the data.pkl calls."""
    for name, path in _hostile_archives(tmp_path, tiny_archive, tmp_path / "MARKER").items():
        if name == "__setstate__ code":
            _jit_load(path)
        else:
            with zipfile.ZipFile(path) as archive:
                pickle.loads(archive.read(next(n for n in archive.namelist() if n.endswith("/data.pkl"))))
        assert (tmp_path / "MARKER").exists(), name
        (tmp_path / "MARKER").unlink()


def test_hostile_archives_are_read_as_data_and_refused(tmp_path, tiny_archive):
    marker = tmp_path / "MARKER"
    for name, path in _hostile_archives(tmp_path, tiny_archive, marker).items():
        with pytest.raises(CheckpointMismatchError) as info:
            read_state_dict(path)
        message = str(info.value)
        assert message.startswith(f"{path}: cannot read CLIP weights: ") and "\n" not in message, message
        if name.startswith("data.pkl calls"):  # pickle protocol 2 spells them as Python 2 did
            called = {"os.system": "posix.system", "builtins.exec": "__builtin__.exec"}[name.split()[-1]]
            assert f"data.pkl calls {called}, which is not a tensor record; it is not run" in message, message
        assert not marker.exists(), name


def _pointad(args, cwd: Path, **env) -> subprocess.CompletedProcess:
    """`pointad ARGS` as its own process."""
    environment = {**os.environ, **env}
    return subprocess.run([sys.executable, "-c", "from pointad.shared.cli import main; main()", *map(str, args)], cwd=cwd,
                          env=environment, capture_output=True, text=True, timeout=300)


def _one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.stderr[-2000:]
    assert "weights_only" not in result.stderr and "weights_only" not in result.stdout
    return errors[0]


def _cloud(folder: Path) -> Path:
    """A small random .ply for `detect`."""
    cloud = folder / "cloud.ply"
    points = np.random.default_rng(0).normal(size=(500, 3))
    o3d.io.write_point_cloud(str(cloud), o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points)))
    return cloud


def _vit_l_checkpoint(folder: Path) -> Path:
    """A checkpoint of ours for ViT-L-14-336 with prompts of its text width (768) and depth: checked on loading, before
    any CLIP weights are read."""
    path = folder / "vit-l.pt"
    prompts = PromptLearner(768, 12).state_for_checkpoint()
    torch.save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "epoch": 1, "prompts": prompts,
                "config": {"seed": 0}, "model": load_model_config("vit-l-14-336").to_dict()}, path)
    return path


def test_hostile_clip_weights_given_never_run(eval_store, tmp_path, tiny_archive):
    """`eval report --clip-weights ARCHIVE` (the clip-rendering baseline on ViT-L) with each hostile archive."""
    marker = tmp_path / "MARKER"
    for name, path in _hostile_archives(tmp_path, tiny_archive, marker).items():
        result = CliRunner().invoke(eval_, ["report", "--store", str(eval_store), "--dataset", MVTEC, "--method",
                                            "clip-rendering", "--model", "vit-l-14-336", "--clip-weights", str(path),
                                            "--device", "cpu"])
        assert result.exit_code == 1, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"Error: {path}: cannot read CLIP weights: "), result.output
        assert not marker.exists(), name


def test_hostile_clip_weights_planted_in_a_searched_cache_never_run(tmp_path, tiny_archive):
    """An archive planted where OpenAI's `clip` package caches ViT-L-14-336px.pt (searched when no
    --clip-weights is given), met by `pointad detect` run as its own process: one line naming it."""
    marker = tmp_path / "MARKER"
    home = tmp_path / "home"
    planted = home / ".cache" / "clip" / "ViT-L-14-336px.pt"
    planted.parent.mkdir(parents=True)
    planted.write_bytes(_hostile_archives(tmp_path, tiny_archive, marker)["data.pkl calls os.system"].read_bytes())
    result = _pointad(["detect", _cloud(tmp_path), "--checkpoint", _vit_l_checkpoint(tmp_path), "--device", "cpu",
                       "--views", "1"], tmp_path, HOME=str(home), POINTAD_CACHE=str(tmp_path / "pointad-cache"),
                      HF_HOME=str(tmp_path / "hf"), HF_HUB_CACHE=str(tmp_path / "hf" / "hub"))
    line = _one_line_error(result)
    assert line == f"Error: {planted}: cannot read CLIP weights: data.pkl calls posix.system, which is not a " \
                   "tensor record; it is not run", line
    assert not marker.exists()
    assert not (tmp_path / "cloud_scores").exists()


# --- hostile checkpoints ----------------------------------------------------------------------------------

def _hostile_checkpoints(folder: Path, marker: Path) -> dict[str, Path]:
    """Checkpoint-shaped files whose unpickling runs `touch marker`."""
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "epoch": 1, "prompts": {}, "config": {},
               "model": {}, "hook": _Call(os.system, f"touch '{marker}'")}
    files = {"torch.save zip": folder / "zip.pt", "torch.save legacy": folder / "legacy.pt",
             "plain pickle": folder / "plain.pt"}
    torch.save(payload, files["torch.save zip"])
    torch.save(payload, files["torch.save legacy"], _use_new_zipfile_serialization=False)
    files["plain pickle"].write_bytes(pickle.dumps(payload, protocol=2))
    files["TorchScript archive"] = _jit_save(SetstateMarker(str(marker)), folder / "script.pt")
    return files


def test_hostile_checkpoints_are_armed(tmp_path):
    marker = tmp_path / "MARKER"
    for name, path in _hostile_checkpoints(tmp_path, marker).items():
        if name == "TorchScript archive":
            _jit_load(path)
        elif name == "plain pickle":
            pickle.loads(path.read_bytes())
        else:
            torch.load(path, weights_only=False)  # what a trusting loader would do
        assert marker.exists(), name
        marker.unlink()


def test_hostile_checkpoints_are_refused_in_plain_words(tmp_path):
    marker = tmp_path / "MARKER"
    for name, path in _hostile_checkpoints(tmp_path, marker).items():
        with pytest.raises(CheckpointMismatchError) as info:
            load_checkpoint(path)
        message = str(info.value)
        assert message.startswith(f"{path}: not a readable pointad checkpoint: ") and "\n" not in message, message
        assert "weights_only" not in message and "arbitrary code" not in message, message
        if name == "TorchScript archive":
            assert "a TorchScript archive" in message
        elif name != "plain pickle":  # protocol-2 pickles are not torch files at all
            assert "refers to posix.system, which loading would run" in message, message
        assert not marker.exists(), name


@pytest.mark.parametrize("damage", ["truncated", "empty", "a directory", "missing keys"])
def test_damaged_checkpoints_say_what_is_wrong(tmp_path, damage):
    path = tmp_path / "epoch_1.pt"
    good = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "epoch": 1, "prompts": {"ctx": torch.ones(2)},
            "config": {}, "model": {}}
    if damage == "truncated":
        torch.save(good, tmp_path / "good.pt")
        path.write_bytes((tmp_path / "good.pt").read_bytes()[:-200])
        expected = "not a readable pointad checkpoint: the file is empty or truncated"
    elif damage == "empty":
        path.write_bytes(b"")
        expected = "not a readable pointad checkpoint: the file is empty or truncated"
    elif damage == "a directory":
        path.mkdir()
        expected = "is a directory, not a checkpoint file"
    else:
        torch.save({k: v for k, v in good.items() if k != "model"}, path)
        expected = "damaged pointad checkpoint ('model' is missing or not dict)"
    with pytest.raises(Exception) as info:
        load_checkpoint(path)
    assert str(info.value) == f"{path}: {expected}"


def test_hostile_checkpoint_given_to_eval_report(eval_store, tmp_path):
    marker = tmp_path / "MARKER"
    hostile = _hostile_checkpoints(tmp_path, marker)["torch.save zip"]
    result = CliRunner().invoke(eval_, ["report", "--store", str(eval_store), "--dataset", MVTEC, "--checkpoints",
                                        str(hostile), "--device", "cpu"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: {hostile}: not a readable pointad checkpoint: it refers to posix.system, which loading would run; "
        "a data-only file holds tensors and plain values"]
    assert not marker.exists()


def test_hostile_checkpoint_given_to_detect(tmp_path):
    """`pointad detect --checkpoint HOSTILE` run as its own process."""
    marker = tmp_path / "MARKER"
    hostile = _hostile_checkpoints(tmp_path, marker)["torch.save legacy"]
    line = _one_line_error(_pointad(["detect", _cloud(tmp_path), "--checkpoint", hostile, "--device", "cpu",
                                     "--views", "1"], tmp_path))
    assert line.startswith(f"Error: {hostile}: not a readable pointad checkpoint: it refers to posix.system"), line
    assert not marker.exists()
    assert not (tmp_path / "cloud_scores").exists()
