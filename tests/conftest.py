"""Fixtures shared by the suite: small synthetic datasets in every format, built once per run."""

from __future__ import annotations

import pytest

# Loaded before any test renders: Mesa's llvmpipe and triton (pulled in by torchvision) each bring an LLVM,
# and importing triton after Mesa has loaded its own crashes the process (seen: segfault in triton/knobs.py).
import torchvision  # noqa: F401  (imported for its side effect)

from pointad.render import synthetic
from pointad.render.datasets import open_dataset
from pointad.shared.remote import drop_s3_clients

SMALL = dict(classes=("cookie", "torus"), train=1, validation=1, test_good=1, per_defect=1)


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Generated data and caches of the run go to a temporary folder, never the user's cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("POINTAD_CACHE", str(tmp_path_factory.mktemp("cache")))
    mp.delenv("POINTAD_DATA", raising=False)
    mp.delenv("POINTAD_REGISTRY", raising=False)
    yield
    mp.undo()


def _make(tmp_path_factory, fmt: str, seed: int):
    spec = synthetic.SyntheticSpec(format=fmt, seed=seed, **SMALL)
    root = synthetic.generate(tmp_path_factory.mktemp(fmt) / f"synthetic-{fmt}", spec)
    return spec, open_dataset(format=fmt, root=root)


@pytest.fixture(scope="session")
def mvtec_dataset(tmp_path_factory):
    """(spec, entry) of a small synthetic dataset in the MVTec 3D-AD format."""
    return _make(tmp_path_factory, "mvtec3d", 3)


@pytest.fixture(scope="session")
def eyecandies_dataset(tmp_path_factory):
    """(spec, entry) of a small synthetic dataset in the raw Eyecandies format."""
    return _make(tmp_path_factory, "eyecandies", 4)


@pytest.fixture(scope="session")
def real3d_dataset(tmp_path_factory):
    """(spec, entry) of a small synthetic dataset in the Real3D-AD format."""
    return _make(tmp_path_factory, "real3d", 5)


@pytest.fixture(scope="session")
def eval_store(mvtec_dataset, real3d_dataset, tmp_path_factory):
    """Test splits of two synthetic datasets in one store: synthetic-mvtec3d (organized, RGB) and
    synthetic-real3d (unorganized), classes cookie and torus, one good and five defects each, 3 views."""
    from pointad.render.build import build_store
    from pointad.render.options import RenderOptions
    from pointad.shared.store import open_store
    out = tmp_path_factory.mktemp("eval") / "renders.zarr"
    options = RenderOptions(views=3, image_size=336, supersample=1, point_size=2)
    for _, entry in (mvtec_dataset, real3d_dataset):
        build_store(entry, out, options, splits=["test"])
    assert len(open_store(out)) == 24
    return out


@pytest.fixture(scope="session")
def reference_store(mvtec_dataset, tmp_path_factory):
    """One-worker build of the MVTec-format cookie test split (6 samples; 3 views at 96 px, supersample 2,
    point size 3): the store other builds must equal. Read-only: tests copy it before changing it."""
    from pointad.render.build import build_store
    from pointad.render.options import RenderOptions
    _, entry = mvtec_dataset
    out = tmp_path_factory.mktemp("ref") / "renders.zarr"
    options = RenderOptions(views=3, image_size=96, supersample=2, max_points=96 * 96, point_size=3)
    result = build_store(entry, out, options, classes=["cookie"], splits=["test"])
    assert result.rendered == 6 and not result.failures
    return out


def _cookie_store(mvtec_dataset, tmp_path_factory, name, options):
    """The MVTec-format cookie test split (6 rows: one good, five defects) drawn with `options`."""
    from pointad.render.build import build_store
    _, entry = mvtec_dataset
    out = tmp_path_factory.mktemp(name) / "renders.zarr"
    result = build_store(entry, out, options, classes=["cookie"], splits=["test"])
    assert result.rendered == 6 and not result.failures
    return out


# The cookie stores below are each built once per run for every module that needs the same rows drawn the
# same way (before, each module built its own copy). Read-only: tests copy one before changing it.

@pytest.fixture(scope="session")
def cookie_store(mvtec_dataset, tmp_path_factory):
    """The cookie test split, three views at CLIP's 336 px (legacy renderer): what training, the feature caches
    and detect's runs are made of (tests/train/test_loop.py, test_cache_memory.py, eval/test_detect.py,
    faults/test_train_faults.py)."""
    from pointad.render.options import RenderOptions
    options = RenderOptions(views=3, image_size=336, supersample=1, point_size=2)
    return _cookie_store(mvtec_dataset, tmp_path_factory, "cookie-336", options)


@pytest.fixture(scope="session")
def cookie_splat_336(mvtec_dataset, tmp_path_factory):
    """The cookie test split, two views at CLIP's 336 px, splat renderer (tests/shared/test_h5store.py,
    tests/train/test_feature_cache_identity.py)."""
    from pointad.render.options import RenderOptions
    options = RenderOptions(views=2, image_size=336, supersample=1, point_size=2, renderer="splat")
    return _cookie_store(mvtec_dataset, tmp_path_factory, "cookie-splat-336", options)


@pytest.fixture(scope="session")
def cookie_splat_48(mvtec_dataset, tmp_path_factory):
    """The cookie test split, two views at 48 px, splat renderer: the smallest real store (tests/shared/
    test_store_check.py, test_store_v2.py, tests/eval/test_figures.py)."""
    from pointad.render.options import RenderOptions
    options = RenderOptions(views=2, image_size=48, supersample=1, max_points=48 * 48, point_size=3, renderer="splat")
    return _cookie_store(mvtec_dataset, tmp_path_factory, "cookie-splat-48", options)


# --- Object storage (issue 22): a real S3-compatible server (moto's server mode) on 127.0.0.1 --------------

S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "pointad-test-key-id", "AWS_SECRET_ACCESS_KEY": "pointad-test-secret-value",
                  "AWS_DEFAULT_REGION": "us-east-1"}
# variables that would point botocore at a developer's own account or profile instead of the test server
S3_FOREIGN = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL_S3")


class S3Server:
    """A moto server process on 127.0.0.1: `.endpoint` (http://127.0.0.1:PORT), `.env` (the variables a
    process needs to use it: credentials, region, AWS_ENDPOINT_URL, no ~/.aws files), `make_bucket()`."""

    def __init__(self, process, endpoint: str, folder):
        self.process, self.endpoint = process, endpoint
        self.env = {**S3_CREDENTIALS, "AWS_ENDPOINT_URL": endpoint,
                    "AWS_CONFIG_FILE": str(folder / "no-aws-config"),
                    "AWS_SHARED_CREDENTIALS_FILE": str(folder / "no-aws-credentials")}
        self._buckets = 0

    def child_env(self) -> dict:
        """This process's environment with the server's variables: for a child process that uses it."""
        import os
        env = {name: value for name, value in os.environ.items() if name not in S3_FOREIGN}
        return {**env, **self.env}

    def make_bucket(self) -> str:
        """A new, empty bucket's name (an unsigned PUT: moto's server accepts one unless it enforces auth)."""
        import urllib.request
        self._buckets += 1
        name = f"pointad-test-{self._buckets}"
        urllib.request.urlopen(urllib.request.Request(f"{self.endpoint}/{name}", method="PUT"), timeout=30).close()
        return name


def _start_s3_server(folder, extra_env: dict):
    import os
    import subprocess
    import sys
    import time
    import urllib.error
    import urllib.request

    from tests.helpers import free_port
    port = free_port()
    log = folder / "moto.log"
    env = {**os.environ, **extra_env}
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                   stdout=out, stderr=subprocess.STDOUT, env=env)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=5).close()
            return S3Server(process, endpoint, folder)
        except urllib.error.HTTPError:
            return S3Server(process, endpoint, folder)  # it answers (a refusing server says 403)
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                process.wait()
                pytest.fail(f"moto server did not start on port {port}: {log.read_text()[-2000:]}")
            time.sleep(0.1)


def _stop(server: S3Server) -> None:
    import subprocess
    server.process.terminate()
    try:
        server.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """One S3-compatible server (moto) for the run, accepting any credentials (see `s3_env`)."""
    server = _start_s3_server(tmp_path_factory.mktemp("s3"), {})
    yield server
    _stop(server)


@pytest.fixture(scope="session")
def s3_server_refusing(tmp_path_factory):
    """A second moto server that checks credentials from its first request on (INITIAL_NO_AUTH_ACTION_COUNT=0):
    our test credentials are unknown to it, so every request is refused (InvalidAccessKeyId, 403)."""
    server = _start_s3_server(tmp_path_factory.mktemp("s3-refusing"), {"INITIAL_NO_AUTH_ACTION_COUNT": "0"})
    yield server
    _stop(server)


def _use_s3(monkeypatch, server: S3Server):
    for name in S3_FOREIGN:
        monkeypatch.delenv(name, raising=False)
    for name, value in server.env.items():
        monkeypatch.setenv(name, value)
    drop_s3_clients()  # an instance made before holds the old endpoint


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """The test talks to `s3_server` through the standard variables (botocore reads them); yields the server.
    s3fs's clients are closed and forgotten before and after, so none outlives the variables it was made with."""
    _use_s3(monkeypatch, s3_server)
    yield s3_server
    drop_s3_clients()


@pytest.fixture
def s3_env_refusing(s3_server_refusing, monkeypatch):
    """`s3_env` for the server that refuses our credentials."""
    _use_s3(monkeypatch, s3_server_refusing)
    yield s3_server_refusing
    drop_s3_clients()
