"""Hostile paths (issue #21) as real processes: what sits where a writer lock goes, symlinked and respelled
targets of one lock, `render synth --overwrite` onto folders that are not its own, symlinks among temp
folders and outputs, and names from data printed by `render info` (design §8)."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import stat
import subprocess
import sys
import textwrap
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import zarr

from pointad.render.synthetic import MANIFEST
from pointad.shared.io import remove_stale_temp_siblings, write_png
from pointad.shared.names import printable
from pointad.shared.store import StoreAttrs
from pointad.shared.store_write import append_samples, create_store, set_failures

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
LOCK = ".renders.zarr.pointad-lock"

# Takes the writer lock of argv[1] and reports like a command: "taken", or the one-line error and exit 1.
TAKE = textwrap.dedent("""
    import sys
    from pointad.shared.errors import PointADError
    from pointad.shared.lock import writer_lock
    try:
        with writer_lock(sys.argv[1], "test taker"):
            print("taken", flush=True)
    except PointADError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        sys.exit(1)
""")
# Holds the writer lock of argv[1] until its stdin closes: the test decides when it lets go.
HOLD = textwrap.dedent("""
    import sys
    from pointad.shared.lock import writer_lock
    with writer_lock(sys.argv[1], "test holder"):
        print("held", flush=True)
        sys.stdin.read()
""")


def _python(script: str, *args, cwd=REPO, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", script, *map(str, args)], cwd=cwd, env=ENV, capture_output=True,
                          text=True, timeout=timeout)


def _pointad(*args, cwd=REPO, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([str(REPO / ".venv" / "bin" / "pointad"), *map(str, args)], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def _one_error(result: subprocess.CompletedProcess) -> str:
    """The single `Error:` line of a refused process (exit 1, no traceback; progress bars aside)."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def _tree(root: Path) -> dict[str, object]:
    """Every entry under `root` by relative path: a file's SHA-256, a link's target, 'dir' for a folder."""
    out = {}
    for path in sorted(root.rglob("*")):
        key = path.relative_to(root).as_posix()
        out[key] = (f"-> {os.readlink(path)}" if path.is_symlink() else "dir" if path.is_dir()
                    else hashlib.sha256(path.read_bytes()).hexdigest())
    return out


@pytest.fixture
def holder_process():
    """Start a process holding the writer lock of a path; stop it (stdin closed) at the end."""
    started = []

    def start(target, cwd=REPO):
        process = subprocess.Popen([sys.executable, "-c", HOLD, str(target)], cwd=cwd, env=ENV, text=True,
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        started.append(process)
        assert process.stdout.readline().strip() == "held"
        return process
    yield start
    for process in started:
        process.stdin.close()
        process.wait(timeout=30)


# --- 1. whatever sits where the lock file goes is left as it is ----------------------------------------------

def _plant(kind: str, lock: Path, user: Path) -> str:
    """Put a `kind` thing at `lock`; return how the refusal names it."""
    if kind == "symlink to a user's file":
        lock.symlink_to(user)
        return f"a symbolic link to {user}"
    if kind == "dangling symlink":
        lock.symlink_to(user.with_name("not-yet.txt"))
        return f"a symbolic link to {user.with_name('not-yet.txt')}"
    if kind == "fifo":
        os.mkfifo(lock)
        return "a FIFO (named pipe)"
    if kind == "directory":
        lock.mkdir()
        (lock / "inside.txt").write_text("mine")
        return "a directory"
    if kind == "hard link to a user's file":
        os.link(user, lock)
        return "a file with 1 other hard link(s)"
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["symlink to a user's file", "dangling symlink", "fifo", "directory",
                                  "hard link to a user's file"])
def test_lock_name_holding_anything_but_a_plain_file_is_refused_and_left_as_is(kind, tmp_path):
    """A writer finds a symlink, FIFO, folder or hard link where its lock file goes: it stops at once (a FIFO
    never blocks it: the process has a timeout) with one line naming the lock and what is there, the user's
    file keeps its bytes, a dangling link's target is not created, and the thing is still there as it was."""
    user = tmp_path / "user.txt"
    user.write_bytes(b"the user's bytes\n")
    lock = tmp_path / LOCK
    what = _plant(kind, lock, user)
    before = os.lstat(lock)
    result = _python(TAKE, tmp_path / "renders.zarr", timeout=60)
    assert _one_error(result) == (f"Error: {lock}: is {what}, not a writer lock file (left untouched); "
                                  f"remove it and run again")
    assert user.read_bytes() == b"the user's bytes\n"
    assert not user.with_name("not-yet.txt").exists()
    after = os.lstat(lock)
    assert stat.S_IFMT(after.st_mode) == stat.S_IFMT(before.st_mode) and after.st_size == before.st_size
    assert not (tmp_path / "renders.zarr").exists()


def test_lock_name_holding_a_unix_socket_is_refused(tmp_path, monkeypatch):
    """A bound unix socket where the lock goes: refused in one line, the socket stays."""
    monkeypatch.chdir(tmp_path)  # a relative bind: socket paths are limited to ~107 bytes
    listener = socket.socket(socket.AF_UNIX)
    try:
        listener.bind(LOCK)
        result = _python(TAKE, tmp_path / "renders.zarr")
        assert _one_error(result) == (f"Error: {tmp_path / LOCK}: is a socket, not a writer lock file (left "
                                      f"untouched); remove it and run again")
        assert stat.S_ISSOCK(os.lstat(tmp_path / LOCK).st_mode)
    finally:
        listener.close()


def test_render_build_refuses_a_lock_symlinked_to_a_users_file(mvtec_dataset, tmp_path):
    """The real command: `render build` stops at the planted lock, the user's file keeps its bytes."""
    _, entry = mvtec_dataset
    user = tmp_path / "notes.txt"
    user.write_bytes(b"a week of notes\n")
    (tmp_path / LOCK).symlink_to(user)
    result = _pointad("render", "build", "--format", "mvtec3d", "--root", entry.root, "--classes", "cookie",
                      "--splits", "test", "--out", tmp_path / "renders.zarr")
    assert _one_error(result) == (f"Error: {tmp_path / LOCK}: is a symbolic link to {user}, not a writer lock "
                                  f"file (left untouched); remove it and run again")
    assert user.read_bytes() == b"a week of notes\n" and not (tmp_path / "renders.zarr").exists()


# --- 2. one target, one lock, however it is spelled ----------------------------------------------------------

SPELLINGS = {
    "the folder": lambda root: root / "real.zarr",
    "a symlink to it": lambda root: root / "link.zarr",
    "a path through a symlinked parent": lambda root: root / "parent-link" / "real.zarr",
    "a path with '..'": lambda root: root / "sub" / ".." / "real.zarr",
    "a relative path": lambda root: Path("real.zarr"),
}


@pytest.mark.parametrize("exists", [True, False], ids=["existing", "not yet created"])
@pytest.mark.parametrize("held, taken", [("the folder", "a symlink to it"), ("a symlink to it", "the folder"),
                                         ("a symlink to it", "a path through a symlinked parent"),
                                         ("a path with '..'", "a relative path")])
def test_every_spelling_of_one_target_shares_its_lock(held, taken, exists, tmp_path, holder_process):
    """One process holds the lock through one spelling of a target; another, through another spelling, is
    refused in one line naming the holder's pid, whether or not the target exists yet."""
    if exists:
        (tmp_path / "real.zarr").mkdir()
    (tmp_path / "link.zarr").symlink_to(tmp_path / "real.zarr")  # dangling until the target is made
    (tmp_path / "parent-link").symlink_to(tmp_path)
    (tmp_path / "sub").mkdir()
    process = holder_process(SPELLINGS[held](tmp_path), cwd=tmp_path)
    result = _python(TAKE, SPELLINGS[taken](tmp_path), cwd=tmp_path)
    assert re.fullmatch(rf"Error: {re.escape(str(SPELLINGS[taken](tmp_path)))}: another writer holds it: pid "
                        rf"{process.pid} on host {re.escape(socket.gethostname())} \(since .*, test holder\); "
                        rf"wait for it to finish", _one_error(result))
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".pointad-lock")) == [".real.zarr.pointad-lock"]


def test_render_build_through_a_symlink_is_refused_while_the_folder_is_held(mvtec_dataset, tmp_path,
                                                                            holder_process):
    """The real command: a writer holds `real.zarr`; `render build --out link.zarr` (link.zarr -> real.zarr)
    is refused naming it, and writes nothing."""
    _, entry = mvtec_dataset
    (tmp_path / "link.zarr").symlink_to(tmp_path / "real.zarr")
    process = holder_process(tmp_path / "real.zarr")
    result = _pointad("render", "build", "--format", "mvtec3d", "--root", entry.root, "--classes", "cookie",
                      "--splits", "test", "--out", tmp_path / "link.zarr")
    assert re.fullmatch(rf"Error: {re.escape(str(tmp_path / 'link.zarr'))}: another writer holds it: pid "
                        rf"{process.pid} .*", _one_error(result))
    assert not (tmp_path / "real.zarr").exists()


# --- 3. render synth --overwrite replaces only its own datasets ----------------------------------------------

SYNTH = ["--classes", "box", "--defects", "bump", "--train", "0", "--validation", "0", "--test-good", "0",
         "--grid", "64"]
ATTRS = StoreAttrs(views=2, image_size=8, max_points=16, knn=3,
                   view_plan={"name": "paper", "axes": ["x", "x"], "angles": [-1.0, 1.0]},
                   camera={"model": "pinhole", "fov_degrees": 30.0, "margin": 1.1},
                   software={"zarr": zarr.__version__}, failures=[], render={"views": 2, "light": "on"})


def _user_folder(path: Path) -> Path:
    path.mkdir()
    (path / "thesis.tex").write_text("chapter 1\n")
    (path / ".hidden").write_bytes(b"\x00\x01")
    (path / "figures").mkdir()
    (path / "figures" / "plot.png").write_bytes(b"\x89PNG not really")
    return path


def _render_store(path: Path) -> Path:
    create_store(path, ATTRS)
    append_samples(path, [{"dataset": "d", "class_name": "cookie", "split": "test", "defect_type": "good",
                           "sample_id": "cookie/test/good/000.tiff", "label": 0}])
    return path


def _siblings(folder: Path) -> list[str]:
    """Hidden entries beside the outputs (temp and moved-aside folders), lock files aside."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and ".pointad-lock" not in p.name)


@pytest.mark.parametrize("make", [_user_folder, _render_store], ids=["user folder", "render store"])
def test_synth_overwrite_leaves_what_is_not_its_dataset_byte_for_byte(make, tmp_path):
    out = make(tmp_path / "out")
    before = _tree(out)
    result = _pointad("render", "synth", "--out", out, "--overwrite", *SYNTH)
    assert _one_error(result) == (
        f"Error: {out}: folder exists and is not empty, and is not a synthetic dataset of ours (no {MANIFEST} "
        f"written by 'render synth'), so even --overwrite leaves it alone; choose another --out, or delete the "
        f"folder yourself if you no longer need it")
    assert _tree(out) == before
    assert _siblings(tmp_path) == []


def test_synth_overwrite_replaces_a_dataset_it_wrote_and_only_with_overwrite(tmp_path):
    out = tmp_path / "data"
    assert _pointad("render", "synth", "--out", out, "--seed", "1", *SYNTH).returncode == 0
    first = _tree(out)
    again = _pointad("render", "synth", "--out", out, "--seed", "2", *SYNTH)
    assert _one_error(again) == (f"Error: {out}: folder exists and is not empty (a synthetic dataset: "
                                 f"--overwrite replaces it)")
    assert _tree(out) == first
    replaced = _pointad("render", "synth", "--out", out, "--seed", "2", "--overwrite", *SYNTH)
    assert replaced.returncode == 0, replaced.stderr
    assert '"seed": 2' in (out / MANIFEST).read_text() and _tree(out).keys() == first.keys() != {}
    assert _tree(out) != first
    assert _siblings(tmp_path) == []


@pytest.mark.parametrize("target", ["user folder", "synthetic dataset", "empty folder", "missing"])
@pytest.mark.parametrize("overwrite", [True, False], ids=["overwrite", "no overwrite"])
def test_synth_onto_a_symlink_is_refused_and_never_touches_its_target(target, overwrite, tmp_path):
    """`--out link`: refused in one line naming the link's target (never resolved, never followed); the
    target keeps every file, the link stays a link."""
    real = tmp_path / "real"
    if target == "user folder":
        _user_folder(real)
    elif target == "synthetic dataset":
        assert _pointad("render", "synth", "--out", real, *SYNTH).returncode == 0
    elif target == "empty folder":
        real.mkdir()
    before = _tree(real) if real.exists() else None
    link = tmp_path / "link"
    link.symlink_to(real)
    result = _pointad("render", "synth", "--out", link, *SYNTH, *(["--overwrite"] if overwrite else []))
    assert _one_error(result) == (f"Error: {link}: is a symbolic link (to {real}); give the folder itself (a link "
                                  f"is never followed into writing or replacing what it points to)")
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert (_tree(real) if real.exists() else None) == before
    assert _siblings(tmp_path) == []


# --- temp folders and outputs: a symlink is never followed into deleting or writing --------------------------

def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_stale_temp_names_that_are_symlinks_are_left_and_links_inside_are_not_followed(tmp_path):
    """Beside `renders.zarr`: a symlink with a dead writer's temp name, pointing at a user's folder, and a
    real dead writer's temp folder holding a symlink to another user's folder. Creating the store removes
    only the real temp folder; both user folders keep every file, the planted link stays."""
    host, pid = socket.gethostname(), _dead_pid()
    mine, theirs = _user_folder(tmp_path / "mine"), _user_folder(tmp_path / "theirs")
    before = _tree(mine), _tree(theirs)
    planted = tmp_path / f".renders.zarr.tmp-{host}-{pid}"
    planted.symlink_to(mine)
    stale = tmp_path / f".renders.zarr.tmp-{pid}"  # the older name, without the host
    stale.mkdir()
    (stale / "zarr.json").write_text("{}")
    (stale / "into-theirs").symlink_to(theirs)
    assert remove_stale_temp_siblings(tmp_path / "renders.zarr") == [stale]
    assert (_tree(mine), _tree(theirs)) == before
    assert planted.is_symlink() and not stale.exists()
    create_store(tmp_path / "renders.zarr", ATTRS)  # the writer that calls it
    assert (_tree(mine), _tree(theirs)) == before and planted.is_symlink()


def test_atomic_output_named_by_a_symlink_replaces_the_link_not_its_target(tmp_path):
    user = tmp_path / "photo.png"
    user.write_bytes(b"the user's photo")
    link = tmp_path / "out.png"
    link.symlink_to(user)
    write_png(link, np.zeros((4, 4), np.uint8))
    assert user.read_bytes() == b"the user's photo"
    assert not link.is_symlink() and link.read_bytes().startswith(b"\x89PNG")


# --- 4. names from data print on one line --------------------------------------------------------------------

@pytest.mark.parametrize("name, shown", [
    ("cookie", "cookie"),
    ("Müller_日本語_ß é", "Müller_日本語_ß é"),       # letters of any script and spaces stay
    ("a\nb", "a\\nb"), ("a\rb\tc", "a\\rb\\tc"),
    ("x\x00y", "x\\x00y"), ("\x1b[2J", "\\x1b[2J"), ("del\x7f", "del\\x7f"), ("nel\x85", "nel\\x85"),
    ("evil\u202egnp.exe", "evil\\u202egnp.exe"),
    ("\u202a\u202b\u202c\u202d", "\\u202a\\u202b\\u202c\\u202d"),
    ("\u2066x\u2067y\u2068z\u2069", "\\u2066x\\u2067y\\u2068z\\u2069"),
    ("zero\u200bwidth\u200c\u200d\ufeff", "zero\\u200bwidth\\u200c\\u200d\\ufeff"),
    ("line\u2028para\u2029", "line\\u2028para\\u2029"),
    ("bad\udcffbyte", "bad\\udcffbyte"),               # an undecodable byte of a file name (surrogateescape)
    ("tag\U000e0041", "tag\\U000e0041"),
    ("back\\slash", "back\\slash"),
    (42, "42"),
])
def test_printable_escapes_controls_bidi_and_invisibles(name, shown):
    assert printable(name) == shown
    assert printable(shown) == shown  # already printable: unchanged
    assert not any(unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp") for c in printable(name))


def test_render_info_prints_names_from_data_escaped(tmp_path):
    """A store whose dataset, class and failure names carry ESC sequences, a bidi override, NUL, a zero-width
    space and a newline: `render info` shows them escaped, and no such character reaches the terminal (a newline
    inside a name would forge a line of the table)."""
    store = tmp_path / "hostile.zarr"
    create_store(store, ATTRS)
    append_samples(store, [{"dataset": "ds\x1b[31m", "class_name": "evil\u202egnp\nforged", "split": "test",
                            "defect_type": "good", "sample_id": "a/000.tiff", "label": 0}])
    set_failures(store, [{"dataset": "ds\x1b[31m", "sample_id": "b\x00\u200b.tiff", "reason": "bad\x1b]0;title\x07"}])
    result = _pointad("render", "info", store)
    assert result.returncode == 0, result.stderr
    assert "ds\\x1b[31m" in result.stdout and "evil\\u202egnp\\nforged" in result.stdout
    assert not [line for line in result.stdout.splitlines() if line.startswith("forged")]
    assert "  ds\\x1b[31m:b\\x00\\u200b.tiff: bad\\x1b]0;title\\x07" in result.stdout.splitlines()
    assert not [c for c in result.stdout if c != "\n" and unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp")]
