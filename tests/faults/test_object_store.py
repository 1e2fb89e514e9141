"""The render store on object storage under real processes (issue 22 item 3): a moto S3 server on 127.0.0.1, a
`dask scheduler` and two `dask worker` processes writing their rows straight into the bucket, kill -9 of a worker
and of the coordinator, two coordinators at once, training and evaluation reading the bucket, and the commands a
user runs against it. Equal means equal object for object and byte for byte to the local one-process build."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pointad.shared.cli import pointad
from pointad.shared.store import open_store
from tests.helpers import free_port, stop_group, write_v1_layout

pytest.importorskip("distributed")
pytest.importorskip("s3fs")

REPO = Path(__file__).resolve().parents[2]
DASK = [sys.executable, "-m", "distributed.cli.dask_scheduler"], [sys.executable, "-m", "distributed.cli.dask_worker"]
# tests/faults/test_dask_cluster.py's SMALL_ARGS (tests/conftest.py's reference_store, spelled for the command line)
SMALL_ARGS = ["--views", "3", "--image-size", "96", "--supersample", "2", "--max-points", str(96 * 96),
              "--point-size", "3"]
MVTEC = "synthetic-mvtec3d"
TIMEOUT_S = 240  # the bound on any one command; a hang fails the test instead of the suite
# The coordinator as users run it (`pointad-render ...`), with one test-only knob: a start line, so that two
# coordinators whose imports took different times reach the store together. (The lease's ttl is the user's
# POINTAD_LEASE_TTL: a killed holder's lease would keep the rerun out for the default 30 s.)
COORDINATOR = textwrap.dedent("""
    import os, sys, time
    go = sys.argv[1]
    from pointad.render.cli import main
    if go != "-":
        open(f"{go}.ready-{os.getpid()}", "w").close()
        while not os.path.exists(go):
            time.sleep(0.01)
    sys.argv = ["pointad-render", *sys.argv[2:]]
    main()
""")


# --- helpers -----------------------------------------------------------------------------------------------

def _build_args(entry, url, *extra) -> list[str]:
    return ["build", "--format", "mvtec3d", "--root", str(entry.root), "--classes", "cookie", "--splits", "test",
            "--out", url, *SMALL_ARGS, *extra]


def _coordinator(args, env, *, ttl=None, go="-", **popen) -> subprocess.Popen:
    env = env if ttl is None else {**env, "POINTAD_LEASE_TTL": str(ttl)}
    return subprocess.Popen([sys.executable, "-c", COORDINATOR, str(go), *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            **popen)


def _run(module: str, args, env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=TIMEOUT_S)


def _invoke(*args):
    """The `pointad` command in this process (the module's environment points it at the test server)."""
    return CliRunner().invoke(pointad, [str(a) for a in args])


def _error_lines(text: str) -> list[str]:
    return [line for line in re.split(r"[\r\n]", text) if line.startswith("Error:")]


def _one_error(returncode: int, stdout: str, stderr: str, *fragments) -> str:
    """The single `Error:` line of a failed command (progress bars aside), checked to hold every fragment."""
    assert returncode == 1, stdout + stderr
    errors = _error_lines(stdout + "\n" + stderr)
    assert len(errors) == 1 and "Traceback" not in stdout + stderr, stdout + stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def _local_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _objects(url: str) -> dict[str, bytes]:
    """Every object under `url`, by key relative to it, with its bytes."""
    from pointad.shared.location import as_location
    location = as_location(url)
    location.fs.invalidate_cache()  # listings cached while a build wrote would hide its newer objects
    prefix = location.path.rstrip("/") + "/"
    return {key[len(prefix):]: location.fs.cat_file(key) for key in location.fs.find(location.path)}


def _keys(url: str) -> list[str]:
    from pointad.shared.location import as_location
    location = as_location(url)
    location.fs.invalidate_cache()
    return location.fs.find(location.path)


def _assert_equal_to(url: str, local: Path) -> None:
    remote, files = _objects(url), _local_files(local)
    assert sorted(remote) == sorted(files)
    differing = [key for key in files if remote[key] != files[key]]
    assert differing == [], [_difference(remote[key], files[key]) for key in differing[:3]]


def _difference(a: bytes, b: bytes) -> str:
    """Where two objects differ: the differing entries of two JSON documents, else the first differing byte."""
    try:
        x, y = json.loads(a), json.loads(b)
    except ValueError:
        return f"first difference at byte {next((i for i, (p, q) in enumerate(zip(a, b)) if p != q), min(len(a), len(b)))}"

    def flat(value, prefix=""):
        if isinstance(value, dict):
            return {k: v for key, item in value.items() for k, v in flat(item, f"{prefix}/{key}").items()}
        return {prefix: value}
    fx, fy = flat(x), flat(y)
    return "; ".join(f"{k}: {fx.get(k)!r} != {fy.get(k)!r}" for k in sorted(set(fx) | set(fy)) if fx.get(k) != fy.get(k))


def _wait_for(condition, process: subprocess.Popen | None, what: str, timeout: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            out, err = process.communicate()
            pytest.fail(f"the build ended ({process.returncode}) before {what}: {out[-1500:]} {err[-1500:]}")
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.05)


def _rows_drawn(url: str) -> bool:
    """True once a view image chunk is in the bucket: the workers are drawing rows."""
    return any("/image/c/" in key for key in _keys(url))


def _lease(url: str) -> str:
    from pointad.shared.lease import lease_url
    return lease_url(url)


def _no_secret_anywhere(secret: bytes, bucket: str, *folders: Path) -> None:
    """No object of `bucket` (the store, its lease), no file under `folders` holds the secret."""
    import fsspec
    fs = fsspec.filesystem("s3")
    fs.invalidate_cache()
    for key in fs.find(bucket):
        assert secret not in fs.cat_file(key), key
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_file():
                assert secret not in path.read_bytes(), path


# --- fixtures ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def s3(s3_server):
    """The module's process talks to the test server through the standard variables (as tests/conftest.py's
    s3_env, for the whole module); yields the server."""
    import s3fs
    mp = pytest.MonkeyPatch()
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL_S3"):
        mp.delenv(name, raising=False)
    for name, value in s3_server.env.items():
        mp.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()
    yield s3_server
    mp.undo()
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="module")
def env(s3):
    """The environment of every child process: the server's variables, the repository importable."""
    child = s3.child_env()
    return {**child, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), child.get("PYTHONPATH")])),
            "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def secret(s3) -> bytes:
    return s3.env["AWS_SECRET_ACCESS_KEY"].encode()


class Cluster:
    """A `dask scheduler` and two single-thread `dask worker` processes on 127.0.0.1, the workers with the S3
    variables in their environment and a folder of their own; `kill_worker(k)` is kill -9 of worker k's
    processes (nanny and worker), `start_worker(k)` starts it again."""

    def __init__(self, folder: Path, env: dict):
        self.folder, self.env = folder, env
        self.address = f"tcp://127.0.0.1:{free_port()}"
        self.cwd = folder / "cwd"
        self.cwd.mkdir(parents=True)
        self.logs = folder / "logs"
        self.logs.mkdir()
        self.scheduler = self._start("scheduler", [*DASK[0], "--host", "127.0.0.1", "--port",
                                                   self.address.rsplit(":", 1)[1], "--no-dashboard"])
        self.workers = {}

    def _start(self, name, command) -> subprocess.Popen:
        with open(self.logs / f"{name}.log", "ab") as log:
            return subprocess.Popen(command, cwd=self.cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)

    def start_worker(self, k: int) -> None:
        self.workers[k] = self._start(f"worker-{k}", [*DASK[1], self.address, "--nworkers", "1", "--nthreads", "1",
                                                      "--no-dashboard", "--host", "127.0.0.1", "--local-directory",
                                                      str(self.folder / f"dask-{k}")])

    def wait_for_workers(self, n: int) -> None:
        from distributed import Client
        with Client(self.address, timeout=60) as client:
            client.wait_for_workers(n, timeout=120)

    def kill_worker(self, k: int) -> None:
        os.killpg(self.workers[k].pid, signal.SIGKILL)
        self.workers[k].wait(timeout=30)

    def stop(self) -> None:
        for process in [*self.workers.values(), self.scheduler]:  # workers first, then the scheduler
            stop_group(process)

    def logs_text(self) -> str:
        return "".join(f"--- {log.name}\n{log.read_text(errors='replace')[-2000:]}" for log in sorted(self.logs.iterdir()))


@pytest.fixture(scope="module")
def cluster(env, tmp_path_factory):
    cluster = Cluster(tmp_path_factory.mktemp("cluster"), env)
    try:
        for k in range(2):
            cluster.start_worker(k)
        cluster.wait_for_workers(2)
        yield cluster
    except Exception:
        print(cluster.logs_text())
        raise
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def local_build(mvtec_dataset, tmp_path_factory):
    """The same `render build` (SMALL_ARGS) into a local folder, one process: the store every build into the
    bucket must equal. (tests/conftest.py's reference_store has the same rows, but records the point size as a
    render option rather than as the --point-size of the command line.)"""
    _, entry = mvtec_dataset
    out = tmp_path_factory.mktemp("local") / "renders.zarr"
    result = CliRunner().invoke(pointad, ["render", *_build_args(entry, str(out))])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def cluster_build(cluster, env, mvtec_dataset, s3):
    """`render build --backend dask --scheduler ... --out s3://...` run by a client process: (url, its output)."""
    _, entry = mvtec_dataset
    url = f"s3://{s3.make_bucket()}/renders.zarr"
    done = _run("pointad.render.cli", _build_args(entry, url, "--backend", "dask", "--scheduler", cluster.address), env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:] + cluster.logs_text()
    return url, done


@pytest.fixture(scope="module")
def eval_bucket(eval_store, s3):
    """tests/conftest.py's eval_store (two datasets, 336 px) copied into a bucket with the filesystem's put."""
    import fsspec
    url = f"s3://{s3.make_bucket()}/eval.zarr"
    fsspec.filesystem("s3").put(str(eval_store), url.removeprefix("s3://"), recursive=True)
    _assert_equal_to(url, eval_store)
    return url


# --- 1. a dask cluster writes the same store into the bucket ----------------------------------------------

def test_scheduler_and_two_workers_build_into_s3_the_local_store_byte_for_byte(cluster_build, cluster, local_build,
                                                                                s3, secret):
    url, done = cluster_build
    assert "6 rendered, 0 already complete, 0 failed of 6 planned" in done.stdout
    _assert_equal_to(url, local_build)
    assert _keys(_lease(url)) == []  # released
    _no_secret_anywhere(secret, url.split("/")[2], cluster.logs)  # the objects, the scheduler's and workers' logs
    assert secret.decode() not in done.stdout + done.stderr


# --- 2. kill -9 of a worker, of the coordinator; the rerun completes with the same bytes ------------------

def test_kill9_of_a_worker_mid_build_then_a_rerun_gives_the_same_bytes(cluster, env, mvtec_dataset, local_build,
                                                                       s3):
    _, entry = mvtec_dataset
    url = f"s3://{s3.make_bucket()}/renders.zarr"
    args = _build_args(entry, url, "--backend", "dask", "--scheduler", cluster.address)
    build = _coordinator(args, env)
    try:
        _wait_for(lambda: _rows_drawn(url), build, "a row drawn")
        cluster.kill_worker(0)
        build.communicate(timeout=TIMEOUT_S)  # the other worker takes its tasks, or the build fails: either way
    finally:
        stop_group(build)
    rerun = _invoke("render", *args)  # in this process: its imports are paid for
    assert rerun.exit_code == 0, rerun.output + cluster.logs_text()
    assert re.search(r"\d rendered, \d already complete, 0 failed of 6 planned", rerun.stdout), rerun.stdout
    _assert_equal_to(url, local_build)
    cluster.start_worker(0)  # the cluster as the next test expects it
    cluster.wait_for_workers(2)


def test_kill9_of_the_coordinator_leaves_its_lease_the_rerun_takes_it_over_once_expired(cluster, env, mvtec_dataset,
                                                                                       local_build, s3, secret):
    """The killed coordinator's lease stays in the bucket, refusing a second writer (naming the dead holder) until
    it expires; then the rerun takes it over and completes the store with the same bytes."""
    from pointad.shared.remote import read_stamped
    _, entry = mvtec_dataset
    url = f"s3://{s3.make_bucket()}/renders.zarr"
    args = _build_args(entry, url, "--backend", "dask", "--scheduler", cluster.address)
    ttl = 6.0
    build = _coordinator(args, env, ttl=ttl)
    try:
        _wait_for(lambda: _rows_drawn(url), build, "a row drawn")
        os.killpg(build.pid, signal.SIGKILL)
        build.wait(timeout=30)
    finally:
        stop_group(build)
    lease = read_stamped(_lease(url))
    assert lease is not None, "the killed coordinator's lease is gone"
    record = json.loads(lease.data)
    assert record["pid"] == build.pid and record["ttl"] == ttl and record["what"] == "render build"
    assert secret not in lease.data
    early = _invoke("render", *args)  # at once: the dead holder's lease is younger than its ttl
    _one_error(early.exit_code, early.stdout, early.stderr,
               f"Error: {url}: another writer holds it: pid {build.pid} on host {socket.gethostname()}")
    # the service's clock says when it expired: wait for that, as the rerun's user would (the lease is not renewed)
    _wait_for(lambda: read_stamped(_lease(url)).age() > ttl + 1.5, None, "expired lease", timeout=60)
    rerun = _invoke("render", *args)
    assert rerun.exit_code == 0, rerun.output + cluster.logs_text()
    assert "0 failed of 6 planned" in rerun.stdout
    _assert_equal_to(url, local_build)
    assert read_stamped(_lease(url)) is None  # the rerun released the lease it took over


# --- 3. two coordinators at once: one builds, the other is refused naming it ------------------------------

def test_two_coordinators_at_once_one_builds_the_other_is_refused_naming_it(env, mvtec_dataset, local_build, s3,
                                                                             tmp_path):
    _, entry = mvtec_dataset
    url = f"s3://{s3.make_bucket()}/renders.zarr"
    go = tmp_path / "go"
    coordinators = [_coordinator(_build_args(entry, url), env, go=go) for _ in range(2)]
    try:
        _wait_for(lambda: len(list(tmp_path.glob("go.ready-*"))) == 2, None, "both coordinators ready")
        go.touch()  # both have imported the CLI: they reach the store together
        outputs = [c.communicate(timeout=TIMEOUT_S) for c in coordinators]
        results = [(c.pid, c.returncode, *output) for c, output in zip(coordinators, outputs)]
    finally:
        for c in coordinators:
            stop_group(c)
    won = [r for r in results if r[1] == 0]
    refused = [r for r in results if r[1] != 0]
    assert len(won) == 1 and len(refused) == 1, results
    assert "6 rendered, 0 already complete, 0 failed of 6 planned" in won[0][2]
    _one_error(*refused[0][1:], f"Error: {url}: another writer holds it: pid {won[0][0]} on host {socket.gethostname()}")
    _assert_equal_to(url, local_build)


# --- 4. training and evaluation read the bucket as they read the disk -------------------------------------

def _train(store, out, *extra):
    result = CliRunner().invoke(pointad, ["train", "run", "--store", str(store), "--dataset", MVTEC, "--class", "cookie",
                                          "--model", "tiny", "--device", "cpu", "--epochs", "1", "--seed", "3",
                                          "--out", str(out), *extra])
    assert result.exit_code == 0, result.output
    return out


def _metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as handle:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(handle)]


def _tensors(run_dir: Path) -> dict:
    from pointad.train.model.checkpoint import load_checkpoint
    flat = {}

    def walk(prefix, value):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}/{k}", v)
        elif isinstance(value, torch.Tensor):
            flat[prefix] = value
    walk("", load_checkpoint(run_dir / "checkpoints" / "epoch_1.pt"))
    return flat


@pytest.fixture(scope="module")
def runs(eval_store, eval_bucket, tmp_path_factory):
    """`train run --model tiny --epochs 1` on the local store and on its copy in the bucket (same seed)."""
    folder = tmp_path_factory.mktemp("runs")
    return _train(eval_store, folder / "local"), _train(eval_bucket, folder / "s3")


def test_train_run_on_the_bucket_equals_the_run_on_disk(runs, secret):
    local, remote = runs
    assert _metrics(remote) == _metrics(local) and len(_metrics(local)) == 1
    a, b = _tensors(local), _tensors(remote)
    assert sorted(a) == sorted(b) and len(a) > 0
    for name in a:
        assert torch.equal(a[name], b[name]), name
    for path in remote.rglob("*"):
        if path.is_file():
            assert secret not in path.read_bytes(), path


def test_dataloader_workers_forked_after_s3_was_used_read_the_same_batches(runs, eval_bucket, tmp_path):
    local, _ = runs
    forked = _train(eval_bucket, tmp_path / "workers", "--loader-workers", "2")
    (got,), (expected,) = _metrics(forked), _metrics(local)
    assert got.keys() == expected.keys() and got["epoch"] == expected["epoch"] == "1"
    assert {k: float(v) for k, v in got.items()} == pytest.approx({k: float(v) for k, v in expected.items()}, abs=1e-6)


def test_eval_report_on_the_bucket_gives_the_numbers_of_the_disk(runs, eval_store, eval_bucket, tmp_path):
    local, _ = runs
    reports = []
    for store in (eval_store, eval_bucket):
        out = tmp_path / f"report-{len(reports)}.json"
        result = CliRunner().invoke(pointad, ["eval", "report", "--store", str(store), "--checkpoints", str(local),
                                              "--dataset", MVTEC, "--setting", "one-vs-rest", "--device", "cpu",
                                              "--report-format", "json", "--out", str(out)])
        assert result.exit_code == 0, result.output
        reports.append(json.loads(out.read_text()))
    assert reports[0]["rows"] == reports[1]["rows"] and len(reports[0]["rows"]) > 0


# --- 5. the other commands on the bucket --------------------------------------------------------------------

def test_info_verify_show_export_read_the_bucket_as_the_disk(cluster_build, local_build, tmp_path):
    url = cluster_build[0]
    for command in (("render", "info"), ("render", "verify")):
        remote, local = _invoke(*command, url), _invoke(*command, local_build)
        assert remote.exit_code == local.exit_code == 0, remote.output
        assert remote.stdout.replace(url, "STORE") == local.stdout.replace(str(local_build), "STORE")
    assert f"{url}: 6 complete samples checked, 0 problem(s)" in remote.stdout
    shown = [_invoke("render", "show", store, "--sample", "2", "--out", tmp_path / f"{k}.png")
             for k, store in enumerate((url, local_build))]
    assert [r.exit_code for r in shown] == [0, 0], shown[0].output
    assert (tmp_path / "0.png").read_bytes() == (tmp_path / "1.png").read_bytes()
    exported = [_invoke("render", "export", store, "--out", tmp_path / f"{k}.h5")
                for k, store in enumerate((url, local_build))]
    assert [r.exit_code for r in exported] == [0, 0], exported[0].output
    import h5py
    with h5py.File(tmp_path / "0.h5") as a, h5py.File(tmp_path / "1.h5") as b:
        names, others = [], []
        a.visit(names.append)
        b.visit(others.append)
        assert names == others and names
        assert dict(a.attrs) == dict(b.attrs) and a.attrs
        for name in names:
            if isinstance(a[name], h5py.Dataset):
                np.testing.assert_array_equal(a[name][()], b[name][()], err_msg=name)


def test_migrate_upgrades_a_v1_store_in_the_bucket_as_on_disk(cookie_splat_48, s3, tmp_path):
    import fsspec

    v1 = write_v1_layout(cookie_splat_48, tmp_path / "v1.zarr")
    url = f"s3://{s3.make_bucket()}/v1.zarr"
    fsspec.filesystem("s3").put(str(v1), url.removeprefix("s3://"), recursive=True)
    remote, local = _invoke("render", "migrate", url), _invoke("render", "migrate", v1)
    assert remote.exit_code == local.exit_code == 0, remote.output
    assert "migrated from schema_version 1 to 2" in remote.output
    _assert_equal_to(url, v1)
    assert _invoke("render", "migrate", url).output.strip().endswith("already schema_version 2; nothing to do")


def test_detect_against_a_reference_in_the_bucket_scores_as_against_the_disk(eval_store, eval_bucket, mvtec_dataset,
                                                                             tmp_path):
    store = open_store(eval_store)
    row = next(int(r) for r in store.indices(dataset=MVTEC, class_name="cookie", split="test")
               if store.identity(int(r))["defect_type"] != "good")
    cloud = Path(mvtec_dataset[1].root) / store.identity(row)["sample_id"]
    outputs = []
    for k, reference in enumerate((eval_store, eval_bucket)):
        out = tmp_path / f"out-{k}"
        result = _invoke("detect", cloud, "--method", "mutual-scoring", "--reference", reference, "--dataset", MVTEC,
                         "--class", "cookie", "--model", "tiny", "--mutual-radii", "1", "--out", out, "--device", "cpu")
        assert result.exit_code == 0, result.output
        outputs.append(out)
    np.testing.assert_array_equal(np.load(outputs[0] / "scores.npy"), np.load(outputs[1] / "scores.npy"))
    a, b = (json.loads((out / "scores.json").read_text()) for out in outputs)
    assert a["reference"].pop("store") == str(eval_store) and b["reference"].pop("store") == eval_bucket
    assert a["render"].pop("recorded_in") == f"reference store {eval_store}"
    assert b["render"].pop("recorded_in") == f"reference store {eval_bucket}"
    assert a == b


# --- 6. a wrong endpoint, a missing bucket, bad credentials: one line, exit 1, no secret ----------------------

def _wrong(kind: str, env: dict, s3, s3_server_refusing) -> tuple[dict, str]:
    """(environment, store URL) of a broken setting, and the words its error must hold."""
    if kind == "endpoint":
        endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
        return {**env, "AWS_ENDPOINT_URL": endpoint}, f"s3://{s3.make_bucket()}/renders.zarr", \
            f"cannot reach the storage endpoint {endpoint}"
    if kind == "bucket":
        return env, "s3://pointad-no-such-bucket/renders.zarr", "bucket 'pointad-no-such-bucket' does not exist"
    return {**env, **s3_server_refusing.env}, "s3://pointad-refused/renders.zarr", "access denied"


@pytest.mark.parametrize("kind", ["endpoint", "bucket", "credentials"])
def test_a_broken_setting_is_one_line_from_build_and_train(kind, env, s3, s3_server_refusing, mvtec_dataset, secret,
                                                           tmp_path):
    _, entry = mvtec_dataset
    child, url, words = _wrong(kind, env, s3, s3_server_refusing)
    commands = [["pointad.render.cli", *_build_args(entry, url)],
                ["pointad.train.cli", "run", "--store", url, "--class", "cookie", "--model", "tiny", "--device", "cpu",
                 "--out", str(tmp_path / "run")]]
    processes = [subprocess.Popen([sys.executable, "-m", *command], cwd=REPO, env=child, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, start_new_session=True) for command in commands]
    try:
        texts = [p.communicate(timeout=TIMEOUT_S) for p in processes]  # the timeout is the bound
        outputs = [(p.returncode, *text) for p, text in zip(processes, texts)]
    finally:
        for process in processes:
            stop_group(process)
    for returncode, stdout, stderr in outputs:
        _one_error(returncode, stdout, stderr, f"Error: {url}: ", words)
        assert secret.decode() not in stdout + stderr
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())
