"""Co-installable (issue 20 item 1): into a fresh virtual environment that already holds another torch inside
pyproject's range, with its torchvision, `pip install` of the project's wheel keeps both; the toolkit runs
with that torch; an optional part that is not installed fails in one line naming its extra.

The other torch is the CPU-only torch 2.13.0 wheel on this machine's disk (pip's find-links; skipped where
there is none), with the torchvision release built for 2.13.0 (0.28.0) from pip's indexes. The rest of the
core dependencies are borrowed from .venv (the versions of .ci/constraints.txt) through a folder of links to
their files that leaves out torch, torchvision, what only they need (CUDA), the extras and the dev tools:
pip sees an environment holding torch 2.13.0 and the rest, and resolves our wheel against it for real.
(A torch alone, without its torchvision, is not kept: pip then picks the newest torchvision, which pins the
newest torch; README, Set-up.)

Not run here, and why: PyPI's torchvision 0.28.0 is a CUDA build; beside the CPU-only torch it does not import
("operator torchvision::nms does not exist"), and open_clip imports torchvision, so `train` and `eval` cannot
start in this environment. The CPU build of that torchvision is only on download.pytorch.org, which this
machine cannot reach. With PyPI's CUDA torch 2.13.0 and that torchvision instead, the wheel kept them and the
three stages ran from an empty folder (a one-off check of 6 GB, not part of the suite; README, Set-up).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from email.parser import Parser
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
OTHER_TORCH, OTHER_TORCHVISION = "2.13.0", "0.28.0"  # a pair built for each other
# left out of the borrowed set: the torch and torchvision pip must keep, and what only they pull in (CUDA
# builds: nvidia-*, cuda-*, triton)
NOT_BORROWED = re.compile(r"^(torch|torchvision|triton|nvidia-.*|cuda-.*)$")


def _name(text: str) -> str:
    return re.sub(r"[-_.]+", "-", text).lower()


def _closure(requirements: list[str]) -> dict[str, metadata.Distribution]:
    """{name: installed distribution} of `requirements` and of everything they require, markers evaluated,
    as installed in this (the test's) environment; NOT_BORROWED names and what only they require skipped."""
    found, todo = {}, [(Requirement(r), "") for r in requirements]
    while todo:
        requirement, extra = todo.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": extra}):
            continue
        name = _name(requirement.name)
        if NOT_BORROWED.match(name):
            continue
        dist = found.get(name)
        if dist is None:
            dist = found[name] = metadata.distribution(requirement.name)
            todo += [(Requirement(r), "") for r in dist.requires or []]
        for wanted in requirement.extras:
            todo += [(Requirement(r), wanted) for r in dist.requires or []]
    return found


def _borrow(dists: dict[str, metadata.Distribution], folder: Path) -> None:
    """Link each distribution's top-level files and folders (its packages, modules, libraries, dist-info)
    into `folder`, which the fresh environment puts on its path."""
    folder.mkdir()
    site = Path(sysconfig.get_paths()["purelib"])
    for dist in dists.values():
        # its RECORD lists its .dist-info too, which pip reads to see it installed
        tops = {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops:
            if (site / top).exists() and not (folder / top).exists() and not top.endswith(".pth"):
                (folder / top).symlink_to(site / top)


def _pip(python: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run([str(python), "-m", "pip", *args, "--disable-pip-version-check"], capture_output=True,
                          text=True, cwd=cwd)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def other_torch_env(tmp_path_factory):
    """(python, pip's install report of our wheel) of a fresh venv that held torch 2.13.0 and its torchvision
    before the wheel."""
    base = tmp_path_factory.mktemp("install")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(base / "dist"), str(REPO)], check=True, capture_output=True)
    wheel, = (base / "dist").glob("pointad_toolkit-*.whl")
    subprocess.run([sys.executable, "-m", "venv", str(base / "venv")], check=True)
    python = base / "venv" / "bin" / "python"
    local = subprocess.run([str(python), "-m", "pip", "download", "--no-deps", "--no-index", "-q", "-d",
                            str(base / "torch"), f"torch=={OTHER_TORCH}"], capture_output=True, text=True)
    if local.returncode != 0:
        pytest.skip(f"no torch {OTHER_TORCH} wheel on this machine's disk (pip's find-links): {local.stderr[-300:]}")
    torch_wheel, = (base / "torch").glob("torch-*.whl")
    # the user's torch and its torchvision, as they would have them; their small dependencies from pip's indexes
    _pip(python, "install", "-q", str(torch_wheel), f"torchvision=={OTHER_TORCHVISION}")
    with zipfile.ZipFile(wheel) as archive:
        document, = (n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        requirements = Parser().parsestr(archive.read(document).decode()).get_all("Requires-Dist")
    installed = {_name(line.split("==")[0]) for line in _pip(python, "freeze").stdout.splitlines()}
    borrowed = {n: d for n, d in _closure(requirements).items() if n not in installed}
    _borrow(borrowed, base / "borrowed")
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    (Path(site) / "borrowed-deps.pth").write_text(f"{base / 'borrowed'}\n")
    # what pip would do first: a resolver that replaced torch would install a CUDA build of several GB
    report = base / "report.json"
    _pip(python, "install", "-q", "--dry-run", "--report", str(report), str(wheel))
    planned = json.loads(report.read_text())
    if any(_name(item["metadata"]["name"]) == "torch" for item in planned["install"]):
        pytest.fail(f"pip would replace torch {OTHER_TORCH}: {[i['metadata']['name'] for i in planned['install']]}")
    _pip(python, "install", "-q", "--report", str(report), str(wheel))
    return python, json.loads(report.read_text())


def _clean_env(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "POINTAD_REGISTRY", "POINTAD_DATA")}
    return env | {"POINTAD_CACHE": str(tmp_path / "cache")}


@pytest.mark.slow
def test_installing_the_wheel_keeps_the_torch_already_there(other_torch_env, tmp_path):
    python, report = other_torch_env
    installed = {_name(item["metadata"]["name"]): item["metadata"]["version"] for item in report["install"]}
    # pip added the toolkit and changed nothing: the torch and torchvision it found satisfy the ranges
    assert installed == {"pointad-toolkit": "0.1.0"}, installed
    version = subprocess.run([str(python), "-c", "import torch; print(torch.__version__)"], check=True,
                             capture_output=True, text=True, cwd=tmp_path).stdout.strip()
    assert version.split("+")[0] == OTHER_TORCH, version
    # the environment holds no extra: neither dask nor the dev tools came with the wheel
    absent = subprocess.run([str(python), "-c", "import importlib.util as u; "
                             "print([m for m in ('dask', 'distributed', 'laspy', 'pye57', 'pytest', 'xarray') "
                             "if u.find_spec(m)])"], check=True, capture_output=True, text=True).stdout.strip()
    assert absent == "[]", absent


@pytest.mark.slow
def test_render_runs_from_an_empty_folder_with_the_other_torch(other_torch_env, tmp_path):
    python, _ = other_torch_env
    folder = tmp_path / "empty"
    folder.mkdir()
    args = ["render", "build", "--dataset", "synthetic", "--splits", "test", "--classes", "cookie", "--views", "2",
            "--supersample", "1", "--renderer", "splat", "-j", "1"]
    done = subprocess.run([str(python.parent / "pointad"), *args], cwd=folder, env=_clean_env(tmp_path),
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    check = ("import torch, pointad.shared as s; store = s.open_store('renders.zarr'); "
             "print(torch.__version__, len(store), int(store.complete.sum()), store.attrs.render.options()['renderer'])")
    out = subprocess.run([str(python), "-c", check], cwd=folder, env=_clean_env(tmp_path), check=True,
                         capture_output=True, text=True).stdout.split()
    assert out[0].split("+")[0] == OTHER_TORCH and int(out[1]) > 0 and out[1] == out[2] and out[3] == "splat", out


@pytest.mark.slow
def test_an_optional_part_not_installed_fails_in_one_line_naming_its_extra(other_torch_env, tmp_path):
    python, _ = other_torch_env
    done = subprocess.run([str(python.parent / "pointad"), "render", "build", "--dataset", "synthetic", "--splits",
                           "test", "--classes", "cookie", "--backend", "dask", "--out", "dask.zarr"],
                          cwd=tmp_path, env=_clean_env(tmp_path), capture_output=True, text=True)
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith("Error: --backend dask needs dask and distributed (") and \
        error.endswith("): pip install 'pointad-toolkit[scale]'"), done.stderr
    assert not (tmp_path / "dask.zarr").exists()


def test_the_lock_pins_a_version_inside_every_range():
    """.ci/constraints.txt (what the suite runs with) and pyproject's ranges (what a user may hold) agree: every
    requirement of the project and of each extra is pinned in the lock, inside its range, and the lock pins
    only exact versions, never the project itself."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    lock = {}
    for line in (REPO / ".ci" / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version and " " not in line, f"not an exact pin: {line!r}"
            lock[_name(name)] = version
    assert "pointad-toolkit" not in lock
    requirements = [*project["dependencies"], *(r for extra in project["optional-dependencies"].values() for r in extra)]
    for text in requirements:
        requirement = Requirement(text)
        pinned = lock.get(_name(requirement.name))
        assert pinned is not None, f"{requirement.name}: in pyproject.toml, not in the lock"
        assert requirement.specifier.contains(pinned, prereleases=True), f"{requirement}: the lock pins {pinned}"
