"""Faults of the render store as real processes (design §8): kill -9 at random moments of `render build`, two
writers at once, a reader during a build, stale temp folders, a full disk, deleted and corrupt chunks and
metadata (verify names them, --repair mends exactly those rows), workers outliving a killed coordinator."""

from __future__ import annotations

import json
import os
import random
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pointad.render.build import build_store
from pointad.render.cli import render
from pointad.render.options import RenderOptions
from pointad.shared.errors import PointADError
from pointad.shared.store import CHECKED_FROM, SampleArrays, open_store
from pointad.shared.store_schema import BY_FIELD, SAMPLE_FIELDS
from pointad.shared.store_write import write_sample

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
# tests/render/test_build.py's SMALL: 6 cookie test samples render in about a second
SMALL = RenderOptions(views=3, image_size=96, supersample=2, max_points=96 * 96, point_size=3)
SMALL_ARGS = ["--views", "3", "--image-size", "96", "--supersample", "2", "--max-points", str(96 * 96),
              "--point-size", "3"]


def build_command(entry, out, *extra, classes="cookie", splits="test", args=SMALL_ARGS):
    return [sys.executable, "-m", "pointad.render.cli", "build", "--format", "mvtec3d", "--root", str(entry.root),
            "--classes", classes, "--splits", splits, "--out", str(out), *args, *extra]


def chunk_files(store: Path) -> dict[str, bytes]:
    """Every file of the store but the metadata, by relative path: the chunks as bytes on disk."""
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*"))
            if p.is_file() and p.name != "zarr.json"}


def assert_same_rows(a, b):
    """Equal identities and every array equal, row for row (rows matched by sample id), all complete."""
    sa, sb = open_store(a), open_store(b)
    rows_b = {sb.identity(i)["sample_id"]: i for i in range(len(sb))}
    assert len(sa) == len(sb) and sa.complete.all() and sb.complete.all()
    for i in range(len(sa)):
        assert sa.identity(i) == sb.identity(rows_b[sa.identity(i)["sample_id"]])
        x, y = sa.sample(i), sb.sample(rows_b[sa.identity(i)["sample_id"]])
        for field in SAMPLE_FIELDS:
            assert np.array_equal(getattr(x, field), getattr(y, field)), (sa.identity(i)["sample_id"], field)


def no_temp_folders(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if ".tmp-" in p.name]


@pytest.fixture
def reference(reference_store):
    """The uninterrupted one-process build of the cookie test split with SMALL (tests/conftest.py)."""
    return reference_store


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kill9_at_a_random_moment_then_rerun_equals_uninterrupted(seed, reference, mvtec_dataset, tmp_path):
    """Killed anywhere (imports, store creation, append, rendering, recording failures), the rerun gives the
    uninterrupted store, and no temp folder of ours is left beside it."""
    _, entry = mvtec_dataset
    out = tmp_path / "killed.zarr"
    delay = random.Random(seed).uniform(0.5, 4.0)
    workers = ["-j", "2"] if seed == 2 else []
    process = subprocess.Popen(build_command(entry, out, *workers), cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    time.sleep(delay)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    result = build_store(entry, out, SMALL, classes=["cookie"], splits=["test"])
    assert result.rendered + result.skipped == 6 and not result.failures
    assert_same_rows(reference, out)
    assert no_temp_folders(tmp_path) == []


# A writer driven step by step: each line read from stdin is one step, done with the library's own write
# functions under the build's writer lock, then acknowledged on stdout. The test reads the store between steps,
# so every state a reader can meet during a build is met, whatever the machine's load.
WRITER = textwrap.dedent("""
    import sys
    from pointad.shared.lock import writer_lock
    from pointad.shared.store import open_store
    from pointad.shared.store_write import append_samples, create_store, open_group, write_sample
    from pointad.shared.store_write import _write_row
    out, reference = sys.argv[1], open_store(sys.argv[2])
    with writer_lock(out, "render build"):
        for line in sys.stdin:
            step, *args = line.split()
            rows = [int(a) for a in args]
            if step == "create":
                create_store(out, reference.attrs)
            elif step == "append":
                append_samples(out, [reference.identity(r) for r in rows])
            elif step == "arrays":  # a worker part-way: every array of the row written, the flag not yet set
                _write_row(open_group(out, "r+"), rows[0], reference.sample(rows[0]))
            elif step == "write":
                write_sample(out, rows[0], reference.sample(rows[0]))
            elif step == "done":
                break
            print("ok", line.strip(), flush=True)
    print("released", flush=True)
""")

# (step, rows appended so far, rows complete after it): rows are the reference's, in its order
STEPS = [("create", 0, []), ("append 0 1", 2, []), ("arrays 0", 2, []), ("write 0", 2, [0]),
         ("append 2 3 4 5", 6, [0]), ("write 2", 6, [0, 2]), ("arrays 1", 6, [0, 2]), ("write 1", 6, [0, 1, 2]),
         ("write 3", 6, [0, 1, 2, 3]), ("write 2", 6, [0, 1, 2, 3]),  # a complete row written again
         ("write 5", 6, [0, 1, 2, 3, 5]), ("write 4", 6, list(range(6)))]


def _send(process, line: str, timeout: float = 120.0) -> str:
    """Send one step to the writer and return its acknowledgement (one line), failing with its stderr."""
    process.stdin.write(line + "\n")
    process.stdin.flush()
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    answer = process.stdout.readline() if ready else ""
    if not answer:
        process.kill()
        raise AssertionError(f"the writer gave no answer to {line!r}: {process.stderr.read()[-3000:]}")
    return answer.strip()


def _reader_sees(out: Path, reference, appended: int, complete: list[int]) -> None:
    """A reader opening the store now: exactly the appended rows, each with its whole identity; exactly the
    complete rows, each read whole and equal to the reference row written there."""
    store = open_store(out)
    assert len(store) == appended
    assert [store.identity(i) for i in range(appended)] == [reference.identity(i) for i in range(appended)]
    assert store.indices().tolist() == complete
    for row in complete:
        stored, expected = store.sample(row), reference.sample(row)
        for field in SAMPLE_FIELDS:
            assert np.array_equal(getattr(stored, field), getattr(expected, field)), (row, field)
    for row in sorted(set(range(appended)) - set(complete)):  # refused by name, never read as zeros
        with pytest.raises(PointADError, match=rf"row\(s\) {row} \(.*\) not completely written"):
            store.sample(row)


def test_second_build_is_refused_and_a_reader_sees_complete_rows_during_a_build(reference, mvtec_dataset,
                                                                                  tmp_path):
    """While a writer holding the build's lock creates the store, appends rows in two batches and writes them
    one at a time (one row part-way, a complete row written again), a reader in another process sees at
    every step exactly the appended rows with their identity and exactly the complete rows, read whole; a
    second `render build` of the store is refused at once in one line naming the holder, and changes nothing."""
    _, entry = mvtec_dataset
    out = tmp_path / "renders.zarr"
    ref = open_store(reference)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(out), str(reference)], cwd=REPO, env=ENV,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for step, appended, complete in STEPS:
            assert _send(writer, step) == f"ok {step}"
            _reader_sees(out, ref, appended, complete)
            if step == "append 2 3 4 5":
                before = chunk_files(out)
                second = CliRunner().invoke(render, build_command(entry, out)[3:])
                assert second.exit_code == 1, second.output
                errors = [line for line in second.output.splitlines() if line.startswith("Error:")]
                assert len(errors) == 1 and re.fullmatch(
                    rf"Error: {re.escape(str(out))}: another writer holds it: pid {writer.pid} on host "
                    rf"{re.escape(socket.gethostname())} \(since [-0-9: ]+, render build\); wait for it to finish",
                    errors[0]), second.output
                assert chunk_files(out) == before, "the refused build changed the store"
                _reader_sees(out, ref, appended, complete)
        assert _send(writer, "done") == "released"
        assert writer.wait(timeout=60) == 0, writer.stderr.read()[-3000:]
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    assert_same_rows(reference, out)


CREATE = textwrap.dedent("""
    import os, sys
    from pointad.shared.errors import PointADError
    from pointad.shared.store import StoreAttrs
    from pointad.shared.store_write import create_store
    attrs = StoreAttrs(views=2, image_size=8, max_points=16, knn=2, view_plan={}, camera={})
    print("ready", flush=True)
    while not os.path.exists(sys.argv[2]):  # both start creating at the same instant
        pass
    try:
        create_store(sys.argv[1], attrs)
        print("created")
    except PointADError as exc:
        print("refused:", exc)
""")


def test_two_processes_creating_one_new_store_one_wins_no_temp_left(tmp_path):
    """Without any lock (library callers), two create_store calls racing on one new path: one store, one
    one-line refusal, no temp folder. Several rounds, both released at the same instant."""
    for round_ in range(3):
        out, go = tmp_path / f"new-{round_}.zarr", tmp_path / f"go-{round_}"
        runs = [subprocess.Popen([sys.executable, "-c", CREATE, str(out), str(go)], cwd=REPO, env=ENV,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        assert [run.stdout.readline().strip() for run in runs] == ["ready", "ready"]
        go.touch()
        outputs = [run.communicate(timeout=60) for run in runs]
        lines = sorted(o.strip() for o, _ in outputs)
        assert all(run.returncode == 0 for run in runs), [e[-2000:] for _, e in outputs]
        assert lines[0] == "created" and lines[1].startswith(f"refused: {out}: "), lines
        assert "already a render store" in lines[1] or "created by another process meanwhile" in lines[1]
        assert len(open_store(out)) == 0
    assert no_temp_folders(tmp_path) == []


def test_stale_temp_folders_of_dead_writers_are_removed_others_kept(tmp_path):
    """A killed create leaves `.<name>.tmp-<host>-<pid>`; the next create removes it, and leaves alone the
    temp folders of a live process, of another host, and anything not named by our pattern."""
    from pointad.render.build import store_attrs
    from pointad.shared.store_write import create_store
    out = tmp_path / "renders.zarr"
    killed = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import os, signal, sys, zarr
        from pointad.shared.io import temp_sibling
        tmp = temp_sibling(sys.argv[1])
        zarr.open_group(tmp, mode="w-", zarr_format=3)
        print(os.getpid(), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """), str(out)], cwd=REPO, env=ENV, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL
    dead = int(killed.stdout)
    leftover = tmp_path / f".renders.zarr.tmp-{socket.gethostname()}-{dead}"
    assert (leftover / "zarr.json").is_file()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        kept = [tmp_path / f".renders.zarr.tmp-{socket.gethostname()}-{live.pid}",  # a live writer's
                tmp_path / f".renders.zarr.tmp-elsewhere-{dead}",                    # another host's
                tmp_path / ".renders.zarr.tmp-notes",                                # not our pattern
                tmp_path / f".other.zarr.tmp-{dead}"]                                # another target's
        for folder in kept:
            folder.mkdir()
            (folder / "keep.txt").write_text("mine")
        create_store(out, store_attrs(SMALL))
        assert not leftover.exists()
        assert all((folder / "keep.txt").read_text() == "mine" for folder in kept)
        assert len(open_store(out)) == 0
    finally:
        live.kill()
        live.wait()


def _mount_tmpfs(folder: Path, size: str) -> bool:
    if os.geteuid() != 0:
        return False
    folder.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True).returncode == 0


def test_disk_full_is_one_line_and_the_retry_after_freeing_space_completes(reference, mvtec_dataset, tmp_path):
    """On a tmpfs too small for the store: `render build` fails with one line naming the store and the
    reason, first while creating it (no temp folder left), then part-way through rendering; once the
    filesystem is larger, the rerun completes and equals the uninterrupted store."""
    _, entry = mvtec_dataset
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "64k"):
        pytest.skip("needs root and tmpfs mounts")
    try:
        out = disk / "renders.zarr"
        args = ["build", "--format", "mvtec3d", "--root", str(entry.root), "--classes", "cookie", "--splits", "test",
                "--out", str(out), *SMALL_ARGS]
        for size in ("64k", "600k"):  # an empty store takes about 120k (4k per metadata file), a row 200k
            subprocess.run(["mount", "-o", f"remount,size={size}", str(disk)], check=True)
            result = CliRunner().invoke(render, args)
            assert result.exit_code == 1, result.output
            error = result.output.strip().splitlines()[-1]
            assert error.startswith(f"Error: {out}") and error.endswith("No space left on device"), result.output
            assert no_temp_folders(disk) == []
        assert 0 < open_store(out).complete.sum() < 6, "the second try should fail part-way through rendering"
        subprocess.run(["mount", "-o", "remount,size=4m", str(disk)], check=True)
        result = CliRunner().invoke(render, args)
        assert result.exit_code == 0, result.output
        assert_same_rows(reference, out)
    finally:
        subprocess.run(["umount", str(disk)], check=True)


@pytest.mark.parametrize("damage", ["deleted", "random bytes", "truncated"])
def test_damaged_chunk_is_named_by_verify_and_repair_rerenders_exactly_that_row(damage, reference, mvtec_dataset,
                                                                                 tmp_path):
    _, entry = mvtec_dataset
    out = tmp_path / "damaged.zarr"
    shutil.copytree(reference, out)
    before = chunk_files(out)
    store = open_store(out)
    row, array = 2, "views/image"
    chunk = out / array / store.array(array).metadata.encode_chunk_key((row, 0, 0, 0, 0))
    assert chunk.is_file()
    if damage == "deleted":
        chunk.unlink()
    elif damage == "random bytes":
        chunk.write_bytes(np.random.default_rng(0).bytes(chunk.stat().st_size))
    else:
        chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 2])
    sample_id = store.identity(row)["sample_id"]

    verified = CliRunner().invoke(render, ["verify", str(out)])
    assert verified.exit_code == 1 and "Traceback" not in verified.output
    problems = [line for line in verified.stdout.splitlines() if line.startswith("problem:")]
    assert problems[0].startswith(f"problem: {store.identity(row)['dataset']}:{sample_id}: row {row}: array {array}: "
                                  "chunk c/2/0/0/0/0 " + ("is missing" if damage == "deleted" else "does not decode"))
    assert len(problems) == 2 and "1 damaged row(s)" in problems[1], problems
    if damage != "deleted":  # a reader names the array and row in one line, not a blosc traceback
        with pytest.raises(PointADError, match=rf"array {array} row\(s\) {row}: a chunk does not decode"):
            open_store(out).sample(row)

    args = ["build", "--format", "mvtec3d", "--root", str(entry.root), "--classes", "cookie", "--splits", "test",
            "--out", str(out), *SMALL_ARGS]
    plain = CliRunner().invoke(render, args)
    assert plain.exit_code == 0, plain.output
    if damage != "deleted":  # a plain rerun only checks that chunks exist; --repair decodes them
        assert "0 rendered, 6 already complete" in plain.output
        repaired = CliRunner().invoke(render, [*args, "--repair"])
        assert repaired.exit_code == 0, repaired.output
        plain = repaired
    assert "1 rendered, 5 already complete" in plain.output
    assert f"repaired: row {row} ({sample_id}): {array}: chunk c/2/0/0/0/0" in plain.output
    after = chunk_files(out)
    assert after.keys() == before.keys()
    differing = [key for key in before if before[key] != after[key]]
    assert differing == [], differing  # the damaged chunk is byte for byte the original again, the rest untouched
    assert CliRunner().invoke(render, ["verify", str(out)]).exit_code == 0


def test_corrupt_array_metadata_is_one_line_and_repair_rewrites_it(reference, mvtec_dataset, tmp_path):
    _, entry = mvtec_dataset
    out = tmp_path / "meta.zarr"
    shutil.copytree(reference, out)
    original = {a: json.loads((out / a / "zarr.json").read_text()) for a in ("points/knn", "samples/complete")}
    (out / "points/knn/zarr.json").write_text('{"shape": [')
    (out / "samples/complete/zarr.json").write_bytes(b"\x00garbage")
    verified = CliRunner().invoke(render, ["verify", str(out)])
    assert verified.exit_code == 1
    assert verified.output.strip().splitlines() == [
        f"Error: {out}: array samples/complete: its zarr.json is unreadable (JSONDecodeError: Expecting value: "
        "line 1 column 1 (char 0)); 'render build --repair' rewrites it from the schema"]
    args = ["build", "--format", "mvtec3d", "--root", str(entry.root), "--classes", "cookie", "--splits", "test",
            "--out", str(out), *SMALL_ARGS]
    assert CliRunner().invoke(render, args).exit_code == 1
    repaired = CliRunner().invoke(render, [*args, "--repair"])
    assert repaired.exit_code == 0, repaired.output
    assert "repaired: points/knn: zarr.json unreadable, rewritten from the schema" in repaired.output
    assert json.loads((out / "points/knn/zarr.json").read_text()) == original["points/knn"]
    rewritten = json.loads((out / "samples/complete/zarr.json").read_text())
    # the chunk record is unknown after the loss: rows before are not required
    assert rewritten["attributes"] == {**original["samples/complete"]["attributes"], CHECKED_FROM: 6}
    assert {**rewritten, "attributes": {}} == {**original["samples/complete"], "attributes": {}}
    assert_same_rows(reference, out)


def test_verify_flags_an_anomalous_sample_whose_point_labels_are_all_zero(reference, tmp_path):
    out = tmp_path / "labels.zarr"
    shutil.copytree(reference, out)
    store = open_store(out)
    row = int(np.flatnonzero([store.identity(i)["label"] == 1 for i in range(len(store))])[0])
    sample = store.sample(row)
    arrays = {name: getattr(sample, name) for name in BY_FIELD}
    arrays.update(label=np.zeros_like(sample.label), mask=np.zeros_like(sample.mask),
                  rgb_mask=np.zeros_like(sample.rgb_mask))
    write_sample(out, row, SampleArrays(**arrays))
    verified = CliRunner().invoke(render, ["verify", str(out)])
    assert verified.exit_code == 1
    assert [line for line in verified.stdout.splitlines() if line.startswith("problem:")] == [
        f"problem: {sample.dataset}:{sample.sample_id}: anomalous sample (label 1) but every point label is 0"]


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:].split()[0] != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the workers through /proc")
def test_loky_workers_exit_promptly_when_only_the_coordinator_is_killed(mvtec_dataset, tmp_path):
    _, entry = mvtec_dataset
    out = tmp_path / "orphans.zarr"
    command = build_command(entry, out, "-j", "2", classes="cookie,torus", splits="train,validation,test",
                            args=["--views", "9", "--image-size", "224", "--supersample", "2"])
    coordinator = subprocess.Popen(command, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers, children = [], set()
    try:
        deadline = time.time() + 60
        while time.time() < deadline and coordinator.poll() is None:
            children.update(_children(coordinator.pid))
            workers = [pid for pid in children if b"LokyProcess" in Path(f"/proc/{pid}/cmdline").read_bytes()]
            if len(workers) == 2 and (out / "samples/complete/c/0").exists():
                break
            time.sleep(0.05)
        assert coordinator.poll() is None and len(workers) == 2, "the build should still be rendering"
        coordinator.send_signal(signal.SIGKILL)  # the coordinator alone, not its process group
        coordinator.wait()
        deadline = time.time() + 5
        while time.time() < deadline and any(_running(pid) for pid in workers):
            time.sleep(0.05)
        assert not [pid for pid in workers if _running(pid)], "loky workers outlived their coordinator"
    finally:
        if coordinator.poll() is None:
            coordinator.kill()
            coordinator.wait()
        for pid in children:  # loky's resource trackers too: all started by our coordinator
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
