"""The product card's three commands as written, in a folder holding only `renders.zarr`.

`render build --dataset D --views 9` writes renders.zarr (its default --out, tested in tests/render);
`train run --store renders.zarr` takes the dataset from the store and the class from datasets.yaml;
`eval report --setting cross-dataset` reads renders.zarr and runs/ and tests every other dataset.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from pointad.eval.cli import eval_
from pointad.train.cli import train

MVTEC, REAL3D = "synthetic-mvtec3d", "synthetic-real3d"


@pytest.fixture
def card_folder(eval_store, tmp_path, monkeypatch):
    """A user's folder: renders.zarr (the two-dataset eval store) and a registry naming the aux class."""
    (tmp_path / "renders.zarr").symlink_to(eval_store, target_is_directory=True)
    registry = tmp_path / "datasets.yaml"
    registry.write_text(f"datasets:\n  {MVTEC}:\n    format: mvtec3d\n    root: none\n    aux_classes: [cookie]\n")
    monkeypatch.setenv("POINTAD_REGISTRY", str(registry))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _invoke(group, args):
    return CliRunner().invoke(group, args, catch_exceptions=False)


def test_train_run_refuses_a_store_of_several_datasets_naming_them(card_folder):
    result = _invoke(train, ["run", "--store", "renders.zarr", "--model", "tiny", "--epochs", "1"])
    assert result.exit_code == 1
    assert result.output.strip() == (f"Error: renders.zarr: holds datasets {MVTEC}, {REAL3D}; "
                                     "choose one with --dataset")


@pytest.mark.slow
def test_card_commands_train_then_report_cross_dataset_and_one_vs_rest(card_folder):
    trained = _invoke(train, ["run", "--store", "renders.zarr", "--dataset", MVTEC, "--model", "tiny",
                              "--epochs", "1", "--device", "cpu"])
    assert trained.exit_code == 0, trained.output
    run = card_folder / "runs" / f"{MVTEC}-cookie-111"
    assert (run / "checkpoints" / "epoch_1.pt").is_file()
    first = trained.output.splitlines()[0]
    assert first == (f"train run: class cookie (first aux_classes entry of {MVTEC} in datasets.yaml); "
                     f"out runs/{MVTEC}-cookie-111")
    assert json.loads((run / "config.json").read_text())["train"]["class_name"] == "cookie"

    cross = _invoke(eval_, ["report", "--setting", "cross-dataset", "--report-format", "json", "--device", "cpu"])
    assert cross.exit_code == 0, cross.output
    said = [line for line in cross.output.splitlines() if line.startswith("eval report:")]
    assert said == [f"eval report: store renders.zarr; runs from runs; 1 trained run(s) of dataset {MVTEC}: "
                    f"{MVTEC}-cookie-111; test dataset(s) {REAL3D}"]
    assert f"eval {REAL3D}:" in cross.stderr  # the progress bar over the test samples
    report = json.loads(cross.stdout)
    assert report["header"]["dataset"] == REAL3D and report["header"]["setting"] == "cross-dataset"
    assert {r["class"] for r in report["rows"]} == {"cookie", "torus", "mean"}  # cross-dataset: every class

    rest = _invoke(eval_, ["report", "--report-format", "json", "--device", "cpu"])  # one-vs-rest: the runs' dataset
    assert rest.exit_code == 0, rest.output
    report = json.loads(rest.output[rest.output.index("{"):])
    assert report["header"]["dataset"] == MVTEC and {r["class"] for r in report["rows"]} == {"torus", "mean"}


def test_report_without_runs_says_what_to_do(card_folder):
    result = _invoke(eval_, ["report", "--setting", "cross-dataset"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: no --checkpoints and no runs folder 'runs' here")
