"""The installable product: the wheel, installed into a fresh virtual environment, runs the three stages
from an empty folder, with its model configs, datasets.yaml and the paper's results as package data, and
installs one import name, `pointad`.

The fresh environment gets the wheel itself (not editable, no access to the checkout) and borrows the
already installed dependencies through a .pth line, so the test needs no network.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory):
    """(python, bin folder) of a new venv holding the project's wheel."""
    base = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(base / "dist"), str(REPO)], check=True, capture_output=True)
    wheel, = (base / "dist").glob("pointad_toolkit-*.whl")
    subprocess.run([sys.executable, "-m", "venv", str(base / "venv")], check=True)
    python = base / "venv" / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    (Path(site) / "borrowed-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True,
                   capture_output=True)
    return python, python.parent


def _clean_env(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "POINTAD_REGISTRY", "POINTAD_DATA")}
    return env | {"POINTAD_CACHE": str(tmp_path / "cache")}


@pytest.mark.slow
def test_the_wheel_installs_one_import_name_with_its_data(wheel_env, tmp_path):
    python, _ = wheel_env
    code = ("import importlib.util, pointad.shared.environment as c, pointad.train.model.model_config as m, "
            "pointad.eval.paper as p;"
            "print(c.registry_path()); print(m.load_model_config('tiny').label); print(p.RESULTS_FILE.is_file());"
            "print([n for n in ('render', 'train', 'eval', 'shared') if importlib.util.find_spec(n)])")
    out = subprocess.run([str(python), "-c", code], cwd=tmp_path, env=_clean_env(tmp_path), check=True,
                         capture_output=True, text=True).stdout.splitlines()
    venv = python.parent.parent
    assert Path(out[0]).is_relative_to(venv) and out[0].endswith("pointad/datasets.yaml"), out
    assert out[1] == "tiny (random weights)" and out[2] == "True" and out[3] == "[]", out


@pytest.mark.slow
def test_the_three_stages_run_from_an_empty_folder(wheel_env, tmp_path):
    _, bin_dir = wheel_env
    folder = tmp_path / "empty"
    folder.mkdir()
    env = _clean_env(tmp_path)

    def run(*args):
        done = subprocess.run([str(bin_dir / "pointad"), *args], cwd=folder, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        return done

    run("render", "build", "--dataset", "synthetic", "--splits", "test", "--classes", "cookie,torus", "--views",
        "2", "--supersample", "1", "--renderer", "splat", "-j", "1")
    assert (folder / "renders.zarr" / "zarr.json").is_file()  # the default --out
    trained = run("train", "run", "--store", "renders.zarr", "--model", "tiny", "--epochs", "1", "--device", "cpu")
    assert "class cookie (first aux_classes entry of synthetic" in trained.stderr  # the packaged datasets.yaml
    assert (folder / "runs" / "synthetic-cookie-111" / "checkpoints" / "epoch_1.pt").is_file()
    reported = run("eval", "report", "--report-format", "json", "--device", "cpu")
    report = json.loads(reported.stdout)
    assert report["header"]["dataset"] == "synthetic" and report["header"]["model"] == "tiny (random weights)"
    assert {r["class"] for r in report["rows"]} == {"torus", "mean"}
