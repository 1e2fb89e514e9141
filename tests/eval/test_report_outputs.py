"""Where `eval report` and `detect` write (issue 9): names from data never leave --figures, the wrong kind of
output path is a one-line error before any work, and a kill -9 never leaves a half-written report."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from pointad.eval.cli import eval_
from pointad.eval.report_figures import class_folder, file_stem
from pointad.shared.cli import pointad
from pointad.shared.store import open_store

MVTEC, REAL3D = "synthetic-mvtec3d", "synthetic-real3d"
HOSTILE_CLASSES = {"cookie": "..", "torus": "a/../../b"}
BASELINE = ["--method", "clip-rendering", "--model", "tiny", "--device", "cpu"]


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if not p.is_dir()}


def _one_line(result) -> str:
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


# --- names from data as path components ---------------------------------------------------------------------

@pytest.mark.parametrize("name", ["..", ".", "../x", "/etc", "a/../../b", "", "a\0b", "..\\..\\x", "~", ".hidden"])
def test_hostile_class_names_stay_one_folder_inside(tmp_path, name):
    folder = class_folder(tmp_path, name)
    assert folder.parent == tmp_path, folder
    assert folder.name not in ("", ".", "..") and not folder.name.startswith(".")
    assert "/" not in folder.name and "\0" not in folder.name and "\\" not in folder.name
    folder.mkdir()  # a real, creatable name
    assert folder.resolve().parent == tmp_path.resolve()


def test_cleaned_names_do_not_share_a_folder(tmp_path):
    names = ["a/b", "a_b", "a\0b", "..", ".", "", "/etc", "etc", "x" * 400, "x" * 401]
    folders = {class_folder(tmp_path, n) for n in names}
    assert len(folders) == len(names)
    assert class_folder(tmp_path, "cable_gland").name == "cable_gland"  # ordinary names unchanged
    assert all(len(f.name.encode()) <= 255 for f in folders)


@pytest.mark.parametrize(("sample_id", "stem"), [("cookie/test/hole/xyz/003.tiff", "cookie_test_hole_xyz_003"),
                                                 ("../../../etc/passwd", "etc_passwd"), ("..", "sample"),
                                                 ("/abs/x.ply", "abs_x"), ("a\0b.pcd", "a_b"), ("", "sample")])
def test_sample_ids_become_one_file_stem(sample_id, stem):
    assert file_stem(sample_id) == stem


@pytest.fixture(scope="module")
def hostile_store(eval_store, tmp_path_factory):
    """A copy of the eval store whose class names and sample ids (of REAL3D) try to leave the figures folder."""
    copy = tmp_path_factory.mktemp("hostile") / "renders.zarr"
    shutil.copytree(eval_store, copy)
    group = zarr.open_group(str(copy), mode="r+")
    datasets = np.array(group["samples/dataset"][:].tolist(), dtype=object)
    classes = np.array(group["samples/class_name"][:].tolist(), dtype=object)
    ids = np.array(group["samples/sample_id"][:].tolist(), dtype=object)
    mine = datasets == REAL3D
    for old, new in HOSTILE_CLASSES.items():
        classes[mine & (classes == old)] = new
    for k, row in enumerate(np.flatnonzero(mine)):
        ids[row] = ["../../../escaped", "/tmp/absolute", "..", f"a/../../{k}"][k % 4] + f"-{k}.pcd"
    group["samples/class_name"][:] = classes.astype(str)
    group["samples/sample_id"][:] = ids.astype(str)
    return copy


@pytest.mark.slow
def test_report_figures_never_write_outside_the_folder(hostile_store, tmp_path):
    store = open_store(hostile_store)
    assert {store.identity(int(i))["class_name"] for i in store.indices(dataset=REAL3D)} == set(HOSTILE_CLASSES.values())
    work = tmp_path / "work"
    figures = work / "deep" / "figures"
    figures.mkdir(parents=True)
    outside_before = _files(tmp_path)
    result = CliRunner().invoke(eval_, ["report", "--store", str(hostile_store), "--dataset", REAL3D, "--setting",
                                        "cross-dataset", "--figures", str(figures), "--figure-samples", "1",
                                        "--out", str(work / "report.md"), *BASELINE])
    assert result.exit_code == 0, result.output
    written = _files(tmp_path) - outside_before
    outside = sorted(p for p in written if figures not in p.parents and p != work / "report.md")
    assert not outside, outside
    assert {p.parent for p in written if figures in p.parents} == {class_folder(figures, c)
                                                                   for c in HOSTILE_CLASSES.values()}
    assert all(p.parent.parent == figures and not p.name.startswith(".") for p in written if figures in p.parents)
    assert len([p for p in written if p.name.endswith("_views.png")]) == 4  # 1 anomalous + 1 good per class


# --- the wrong kind of output path ------------------------------------------------------------------------------

def test_report_out_a_directory_is_one_line_before_any_work(eval_store, tmp_path):
    target = tmp_path / "reports"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    result = CliRunner().invoke(eval_, ["report", "--store", str(eval_store), "--dataset", MVTEC, "--out",
                                        str(target), *BASELINE])
    assert _one_line(result) == f"Error: {target}: is a directory, not a file; --out takes a file name"
    assert _files(tmp_path) == {target / "keep.txt"}


def test_report_out_under_a_file_and_figures_a_file_are_one_line(eval_store, tmp_path):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("mine")
    args = ["report", "--store", str(eval_store), "--dataset", MVTEC, *BASELINE]
    line = _one_line(CliRunner().invoke(eval_, [*args, "--out", str(blocker / "r.md")]))
    assert line == f"Error: {blocker}: is not a folder, cannot write {blocker / 'r.md'} under it"
    line = _one_line(CliRunner().invoke(eval_, [*args, "--figures", str(blocker)]))
    assert line == f"Error: {blocker}: is a file, not a folder; --figures takes a folder"
    assert blocker.read_text() == "mine" and _files(tmp_path) == {blocker}


@pytest.mark.parametrize("wrong", ["out is a file", "out under a file", "scores.npy is a directory",
                                   "cloud is a directory", "checkpoint is a directory"])
def test_detect_wrong_kinds_of_path_are_one_line(tmp_path, wrong):
    cloud = tmp_path / "cloud.xyz"
    np.savetxt(cloud, np.random.default_rng(0).normal(size=(200, 3)))
    checkpoint = tmp_path / "run" / "checkpoints" / "epoch_1.pt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"")
    out = tmp_path / "scores"
    if wrong == "out is a file":
        out = tmp_path / "scores.ply"
        out.write_text("mine")
        expected = f"{out}: is a file, not a folder; --out takes a folder: scores.npy and scores.ply are written in it"
    elif wrong == "out under a file":
        (tmp_path / "file").write_text("mine")
        out = tmp_path / "file" / "scores"
        expected = f"{tmp_path / 'file'}: is not a folder, cannot write {out} under it"
    elif wrong == "scores.npy is a directory":
        (out / "scores.npy").mkdir(parents=True)
        expected = f"{out / 'scores.npy'}: is a directory, not a file"
    elif wrong == "cloud is a directory":
        cloud = tmp_path / "folder.ply"
        cloud.mkdir()
        expected = f"{cloud}: is a directory, not a point cloud file"
    else:
        checkpoint.unlink()
        checkpoint.mkdir()
        expected = f"{checkpoint}: is a directory, not a checkpoint file"
    before = _files(tmp_path)
    result = CliRunner().invoke(pointad, ["detect", str(cloud), "--checkpoint", str(tmp_path / "run"), "--out",
                                          str(out), "--device", "cpu"])
    assert _one_line(result) == f"Error: {expected}"
    assert _files(tmp_path) == before


# --- kill -9 while the report is written ------------------------------------------------------------------------

def _report_process(store: Path, out: Path, cwd: Path) -> subprocess.Popen:
    env = dict(os.environ)
    return subprocess.Popen([sys.executable, "-c", "from pointad.shared.cli import main; main()", "eval", "report",
                             "--store", str(store), "--dataset", MVTEC, "--classes", "torus", "--report-format", "csv",
                             "--out", str(out), *BASELINE], cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


@pytest.mark.slow
def test_kill_9_during_report_leaves_the_previous_file_or_the_complete_new_one(eval_store, tmp_path):
    """A report run to its end gives the complete text; a run killed at a random moment, or as soon as its
    temporary file shows up beside the target (the write in progress), leaves the previous file or that text."""
    reference = tmp_path / "reference.csv"
    started = time.monotonic()
    assert _report_process(eval_store, reference, tmp_path).wait(timeout=300) == 0
    duration = time.monotonic() - started
    complete = reference.read_text()
    assert complete.count("\n") > 3
    previous = "previous report, complete\n"
    out = tmp_path / "out" / "report.csv"
    out.parent.mkdir()
    out.write_text(previous)
    process = _report_process(eval_store, out, tmp_path)
    deadline = time.monotonic() + duration * random.Random(9).uniform(0.5, 1.2)
    while process.poll() is None and time.monotonic() < deadline and not any(out.parent.glob(f".{out.name}.*")):
        time.sleep(0.0005)
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    text = out.read_text()
    assert text in (previous, complete), text[:200]
    leftovers = {p.name for p in out.parent.iterdir()} - {out.name}
    assert all(name.startswith(f".{out.name}.") for name in leftovers), leftovers  # hidden temp files only
