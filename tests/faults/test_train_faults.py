"""Training under faults (issue 9): nothing of the user's is deleted or overwritten, a feature cache is reused,
refused or rebuilt by its recorded fingerprint, one writer per run folder and cache, a run is the same run
whatever the spelling of its store, and kill -9 at any moment followed by --resume gives the uninterrupted
result. Real processes (subprocess + SIGKILL, a second process holding a lock), the tiny model on CPU."""

from __future__ import annotations

import csv
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import zarr
from click.testing import CliRunner

from pointad.shared.lock import holder, lock_path
from pointad.shared.store_write import update_attrs
from pointad.train.cli import train as train_cli
from pointad.train.features import weights_digest
from pointad.train.loop import TrainConfig, train
from pointad.train.model.backbone import load_backbone
from pointad.train.model.checkpoint import load_checkpoint
from pointad.train.model.model_config import load_model_config

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
EPOCHS = 3


@pytest.fixture(scope="module")
def store(cookie_store):
    """Six cookie test samples (one good, five defects), three views at CLIP's 336 px (tests/conftest.py, as
    tests/train/test_loop.py). Read-only: tests copy it before changing it."""
    return cookie_store


@contextmanager
def _one_thread():
    """Run in-process training with the thread count of the OMP_NUM_THREADS=1 subprocesses (bitwise equal)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _run_args(store, out, *extra) -> list[str]:
    return ["run", "--store", str(store), "--class", "cookie", "--model", "tiny", "--device", "cpu",
            "--out", str(out), *extra]


def _invoke(args):
    return CliRunner().invoke(train_cli, [str(a) for a in args])


def _one_error(result, *fragments) -> str:
    """The single `Error:` line of a failed command (progress bars aside), checked to hold every fragment."""
    assert result.exit_code == 1, result.output
    errors = [line for line in re.split(r"[\r\n]", result.output) if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def _snapshot(root: Path) -> dict:
    """Every file under root (or root itself) with its bytes: what a refused command must leave unchanged."""
    if root.is_file():
        return {root.name: root.read_bytes()}
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _prompts(path):
    state = load_checkpoint(path)["prompts"]
    return torch.cat([state["ctx"].flatten(), state["deep"].flatten()])


def _metrics(run_dir) -> list[dict]:
    with open(Path(run_dir) / "metrics.csv", newline="") as handle:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(handle)]


def _assert_same_run(run_dir, reference, epoch):
    difference = (_prompts(Path(run_dir) / "checkpoints" / f"epoch_{epoch}.pt") -
                  _prompts(Path(reference) / "checkpoints" / f"epoch_{epoch}.pt")).abs().max()
    assert difference == 0, f"prompts differ from the uninterrupted run by {difference}"
    assert _metrics(run_dir) == _metrics(reference)


# -- 1. nothing of the user's is deleted -------------------------------------------------------------------

def test_features_out_refuses_anything_but_a_cache(store, tmp_path):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "ideas.txt").write_text("keep me")
    a_file = tmp_path / "report.txt"
    a_file.write_text("keep me too")
    other = tmp_path / "other.zarr"
    zarr.open_group(other, mode="w", attributes={"format": "someone-elses"})
    cases = [(notes, "is a folder that is not a feature cache"), (store, "format 'pointad-renders'"),
             (a_file, "is a file, not a feature cache"), (other, "format 'someone-elses'")]
    for target, reason in cases:
        before = _snapshot(target)
        result = _invoke(["features", "--store", store, "--model", "tiny", "--device", "cpu", "--out", target])
        _one_error(result, f"{target}: ", reason)
        assert _snapshot(target) == before, f"{target} was changed"


def test_run_refuses_to_write_over_the_store_a_folder_or_a_file(store, tmp_path):
    store_before = _snapshot(store)
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "ideas.txt").write_text("keep me")
    a_file = tmp_path / "report.txt"
    a_file.write_text("keep me too")
    _one_error(_invoke(_run_args(store, tmp_path / "a", "--features", store)), f"{store}: ", "pointad-renders")
    _one_error(_invoke(_run_args(store, tmp_path / "b", "--features", notes)), f"{notes}: ", "not a feature cache")
    _one_error(_invoke(_run_args(store, a_file)), f"{a_file}: is a file")
    _one_error(_invoke(_run_args(store, store)), f"{store}: is a Zarr store")
    assert _snapshot(store) == store_before
    assert (notes / "ideas.txt").read_text() == "keep me" and a_file.read_text() == "keep me too"
    assert not (tmp_path / "a" / "checkpoints").exists() and not (tmp_path / "b" / "checkpoints").exists()


# -- 2. the cache fingerprint --------------------------------------------------------------------------------

def test_cache_is_reused_refused_or_rebuilt_by_its_fingerprint(store, tmp_path):
    tiny = load_model_config("tiny")
    digests = {seed: weights_digest(load_backbone(tiny, seed=seed)) for seed in (5, 111)}
    assert digests[5] != digests[111] and digests[5] == weights_digest(load_backbone(tiny, seed=5))
    cache = tmp_path / "features.zarr"
    built = _invoke(["features", "--store", store, "--model", "tiny", "--device", "cpu", "--seed", 5, "--out", cache])
    assert built.exit_code == 0 and "6 samples built" in built.output, built.output
    assert zarr.open_group(cache, mode="r").attrs["weights"] == digests[5]
    before = _snapshot(cache)
    again = _invoke(["features", "--store", store, "--model", "tiny", "--device", "cpu", "--seed", 5, "--out", cache])
    assert again.exit_code == 0 and "6 samples reused" in again.output, again.output

    moved = tmp_path / "copy" / "renders.zarr"
    shutil.copytree(store, moved)
    update_attrs(moved, software={"note": "another store"})  # same rows, another fingerprint
    refusals = [(_run_args(store, tmp_path / "r1", "--seed", 111, "--features", cache), "other model weights;"),
                (_run_args(store, tmp_path / "r2", "--seed", 5, "--layers", "2,4", "--features", cache), "taps"),
                (_run_args(moved, tmp_path / "r3", "--seed", 5, "--features", cache), "other store;")]
    for args, reason in refusals:
        _one_error(_invoke(args), f"{cache}: feature cache made for ", reason, "--rebuild-features")
    assert _snapshot(cache) == before, "a refused run touched the cache"

    rebuilt = _invoke(_run_args(store, tmp_path / "r4", "--seed", 111, "--epochs", 1, "--features", cache,
                                "--rebuild-features"))
    assert rebuilt.exit_code == 0, rebuilt.output
    assert f"{cache}: feature cache rebuilt (model weights differed)" in rebuilt.output
    assert zarr.open_group(cache, mode="r").attrs["weights"] == digests[111]
    for leftover in (".features.zarr.pointad-tmp", ".features.zarr.pointad-old"):
        assert not (tmp_path / leftover).exists(), f"{leftover} left behind"


# -- 3. writer locks: a second process holds the lock -------------------------------------------------------

@contextmanager
def _lock_held_by_another_process(target):
    """A separate Python process holding `target`'s writer lock until the block ends."""
    code = ("import sys, time; from pointad.shared.lock import writer_lock\n"
            "with writer_lock(sys.argv[1], 'test holder'):\n    print('held', flush=True); time.sleep(120)")
    process = subprocess.Popen([sys.executable, "-c", code, str(target)], env=ENV, stdout=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        assert process.stdout.readline().strip() == "held"
        yield process.pid
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def test_locked_cache_and_run_folder_are_refused_in_one_line(store, tmp_path):
    cache, run_dir = tmp_path / "features.zarr", tmp_path / "run"
    with _lock_held_by_another_process(cache) as pid:
        _one_error(_invoke(["features", "--store", store, "--model", "tiny", "--device", "cpu", "--out", cache]),
                   f"{cache}: another writer holds it: pid {pid}")
        _one_error(_invoke(_run_args(store, run_dir, "--features", cache)), f"pid {pid}")
    assert not cache.exists() and not (run_dir / "checkpoints").exists()
    swept = tmp_path / "synthetic-mvtec3d-cookie-111"  # the run a sweep of cookie, seed 111 trains
    with _lock_held_by_another_process(swept) as pid:
        _one_error(_invoke(["sweep", "--store", store, "--dataset", "synthetic-mvtec3d", "--classes", "cookie",
                            "--seeds", "111", "--model", "tiny", "--epochs", "1", "--device", "cpu",
                            "--runs-dir", tmp_path]), f"another writer holds it: pid {pid}")
    assert not (swept / "checkpoints").exists()
    with _lock_held_by_another_process(run_dir) as pid:
        _one_error(_invoke(_run_args(store, run_dir)), f"{run_dir}: another writer holds it: pid {pid}")
    assert not (run_dir / "checkpoints").exists()


# -- 4. a run is the same run whatever the spelling of its store --------------------------------------------

def _config(store, **changes):
    return TrainConfig(**{"store": str(store), "class_name": "cookie", "model": "tiny", "batch_size": 4, **changes})


def test_resume_from_a_relative_path_with_the_absolute_path_of_a_moved_copy(store, tmp_path, monkeypatch):
    copy = tmp_path / "moved" / "renders.zarr"
    shutil.copytree(store, copy)
    with _one_thread():
        train(_config(store.absolute(), epochs=2), tmp_path / "uninterrupted")
        monkeypatch.chdir(store.parent)
        train(_config("renders.zarr", epochs=1), tmp_path / "run")
        # what a kill inside an atomic write leaves (shared.io.atomic_path's temp names): removed on resume
        leftovers = [tmp_path / "run" / "checkpoints" / ".epoch_2.pt.k1ll3d.pt",
                     tmp_path / "run" / ".metrics.csv.x.csv"]
        for leftover in leftovers:
            leftover.write_bytes(b"half a file")
        monkeypatch.chdir(tmp_path)
        result = train(_config(copy.absolute(), epochs=2), tmp_path / "run", resume=True)
    assert result.epochs_run == [2]
    assert not any(leftover.exists() for leftover in leftovers)
    _assert_same_run(tmp_path / "run", tmp_path / "uninterrupted", 2)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["store"] == str(copy.absolute())


# -- 5 and 6. kill -9 at any moment, then --resume; a second writer meanwhile is refused ---------------------

@pytest.fixture(scope="module")
def uninterrupted(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    with _one_thread():
        train(_config(store, epochs=EPOCHS), out)
    return out


def _wait_for(condition, process, what, timeout=300.0):
    deadline = time.time() + timeout
    while not condition():
        assert process.poll() is None, f"the run ended before {what}"
        assert time.time() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.005)


@pytest.mark.parametrize("moment, seed", [("feature build", 0), ("start", 1), ("epoch_1", 2)])
def test_kill_at_any_moment_then_resume_equals_uninterrupted(store, uninterrupted, tmp_path, moment, seed):
    """moment: killed as the feature cache is being written, or at a random delay (drawn from seed) after the
    run took its lock or after its first checkpoint."""
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "pointad.train.cli", *_run_args(store, run_dir, "--epochs", str(EPOCHS))]
    process = subprocess.Popen(command, env=ENV, start_new_session=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: (holder(run_dir) or {}).get("pid") == process.pid, process, "run lock")
        if moment == "feature build":
            building = run_dir / ".features.zarr.pointad-tmp"
            _wait_for(building.exists, process, "feature build")
        else:
            # a second writer into the same --out is refused while the first one runs
            _one_error(_invoke(_run_args(store, run_dir, "--epochs", EPOCHS, "--resume")),
                       f"{run_dir}: another writer holds it: pid {process.pid}")
            if moment != "start":
                checkpoint = run_dir / "checkpoints" / f"{moment}.pt"
                _wait_for(checkpoint.exists, process, moment)
            time.sleep(random.Random(seed).uniform(0, 1.0 if moment == "start" else 0.2))
        assert process.poll() is None, "the run ended before the kill"
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert not (run_dir / "checkpoints" / f"epoch_{EPOCHS}.pt").exists()
    assert lock_path(run_dir).exists() and holder(run_dir)["pid"] == process.pid  # a stale lock is left
    if moment == "feature build":
        assert not (run_dir / "features.zarr").exists(), "a half cache sits where a cache is read"
    with _one_thread():
        result = _invoke(_run_args(store, run_dir, "--epochs", EPOCHS, "--resume"))
    assert result.exit_code == 0, result.output
    if moment == "feature build":
        assert f"{run_dir / 'features.zarr'}: feature cache built" in result.output
    assert not (run_dir / ".features.zarr.pointad-tmp").exists(), "the interrupted build's temp was left"
    assert not list((run_dir / "checkpoints").glob(".epoch_*")), "an interrupted checkpoint's temp was left"
    _assert_same_run(run_dir, uninterrupted, EPOCHS)
