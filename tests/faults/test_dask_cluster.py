"""render build on a dask cluster run the way clusters are run (design §9): a `dask scheduler` process and two
`dask worker` processes on loopback, each its own process, started from the command line."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pointad.shared.store import open_store
from tests.helpers import free_port, stop_group

pytest.importorskip("distributed")

REPO = Path(__file__).resolve().parents[2]
DASK = [sys.executable, "-m", "distributed.cli.dask_scheduler"], [sys.executable, "-m", "distributed.cli.dask_worker"]
# The options of tests/render/test_build.py's SMALL, spelled for the command line.
SMALL_ARGS = ["--views", "3", "--image-size", "96", "--supersample", "2", "--max-points", str(96 * 96),
              "--point-size", "3"]
FIELDS = ("image", "mask", "pixel", "visible", "xyz", "valid", "label", "grid_index", "proxy", "knn", "knn_weight",
          "rgb", "rgb_mask", "n_points", "grid_hw")


@pytest.fixture
def cluster(tmp_path):
    """Address of a scheduler with two registered single-thread workers, all separate processes on 127.0.0.1.

    The workers run in a folder of their own (not the client's), with the repository on PYTHONPATH and the
    environment the build itself has (headless: Open3D renders through EGL, else a private Xvfb).
    """
    from distributed import Client
    address = f"tcp://127.0.0.1:{free_port()}"
    elsewhere = tmp_path / "worker" / "cwd"
    elsewhere.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    logs = tmp_path / "cluster-logs"
    logs.mkdir()
    processes = []

    def start(name, command):
        log = open(logs / f"{name}.log", "wb")
        processes.append(subprocess.Popen(command, cwd=elsewhere, env=env, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True))
        log.close()

    try:
        start("scheduler", [*DASK[0], "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1], "--no-dashboard"])
        for k in range(2):
            start(f"worker-{k}", [*DASK[1], address, "--nworkers", "1", "--nthreads", "1", "--no-dashboard",
                                  "--host", "127.0.0.1", "--local-directory", str(tmp_path / f"dask-{k}")])
        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=60)
            assert len(client.scheduler_info()["workers"]) == 2
        yield address
    except Exception:
        for log in sorted(logs.iterdir()):
            print(f"--- {log.name}\n{log.read_text(errors='replace')[-2000:]}")
        raise
    finally:
        for process in reversed(processes):  # workers first, then the scheduler
            stop_group(process)


def _build(args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pointad.render.cli", "build", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=180)


def test_cli_build_on_scheduler_and_two_workers_equals_joblib(mvtec_dataset, cluster, tmp_path):
    """The same rows, every array equal, as the default (joblib/loky) backend; the store and the dataset are
    given relative to the client's folder, which is not the workers' folder."""
    _, entry = mvtec_dataset
    client_cwd = tmp_path / "client"
    client_cwd.mkdir()
    root = os.path.relpath(entry.root, client_cwd)
    data = ["--format", "mvtec3d", "--root", root, "--classes", "cookie", "--splits", "test", *SMALL_ARGS]
    started = time.time()
    dask_run = _build([*data, "--out", "dask.zarr", "--backend", "dask", "--scheduler", cluster], client_cwd)
    assert dask_run.returncode == 0, dask_run.stdout[-2000:] + dask_run.stderr[-3000:]
    assert "6 rendered, 0 already complete, 0 failed of 6 planned" in dask_run.stdout
    dask_seconds = time.time() - started
    joblib_run = _build([*data, "--out", str(tmp_path / "joblib.zarr"), "--workers", "2"], client_cwd)
    assert joblib_run.returncode == 0, joblib_run.stderr[-3000:]

    assert not (tmp_path / "worker" / "cwd" / "dask.zarr").exists(), "a worker wrote rows into its own folder"
    a, b = open_store(client_cwd / "dask.zarr"), open_store(tmp_path / "joblib.zarr")
    assert len(a) == len(b) == 6 and a.complete.all() and b.complete.all()
    rows_b = {b.identity(i)["sample_id"]: i for i in range(len(b))}
    for i in range(len(a)):
        j = rows_b[a.identity(i)["sample_id"]]
        assert a.identity(i) == b.identity(j)
        x, y = a.sample(i), b.sample(j)
        for field in FIELDS:
            assert np.array_equal(getattr(x, field), getattr(y, field)), (a.identity(i)["sample_id"], field)
        assert x.image.any() and x.visible.any(), "blank views: the workers did not render"
    assert dask_seconds < 120
