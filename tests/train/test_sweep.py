"""`train sweep`: plan, skip done runs, resume partial ones, refuse a directory holding other settings."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from pointad.shared.errors import ConfigError, PointADError
from pointad.train.cli import train as train_cli
from pointad.train.loop import TrainConfig, train
from pointad.train.model.checkpoint import latest_checkpoint
from pointad.train.run_record import REWRITE
from pointad.train.sweep import aux_classes, plan_sweep, run_state, sweep

MVTEC = "synthetic-mvtec3d"


def _base(store, **changes):
    return TrainConfig(**{"store": str(store), "class_name": "", "dataset": MVTEC, "model": "tiny", "epochs": 1,
                          **changes})


def test_aux_classes_are_the_papers():
    assert aux_classes("mvtec3d") == ("carrot", "cookie", "dowel")
    assert aux_classes("eyecandies") == ("Confetto", "LicoriceSandwich", "PeppermintCandy")
    assert aux_classes("real3d") == ("seahorse", "shell", "starfish")
    with pytest.raises(ConfigError, match="no aux_classes for dataset 'nope'"):
        aux_classes("nope")


def test_plan_names_runs_as_train_run_does(tmp_path):
    runs = plan_sweep(_base("s.zarr"), ["cookie", "torus"], [1, 2], tmp_path)
    assert [r.run_dir.name for r in runs] == [f"{MVTEC}-cookie-1", f"{MVTEC}-cookie-2", f"{MVTEC}-torus-1",
                                              f"{MVTEC}-torus-2"]
    assert [(r.config.class_name, r.config.seed) for r in runs] == [("cookie", 1), ("cookie", 2), ("torus", 1),
                                                                      ("torus", 2)]
    with pytest.raises(ConfigError, match="--dataset"):
        plan_sweep(_base("s.zarr", dataset=None), ["cookie"], [1], tmp_path)


@pytest.mark.slow
def test_sweep_trains_missing_skips_done_and_resumes_partial(eval_store, tmp_path):
    runs = plan_sweep(_base(eval_store), ["cookie", "torus"], [7], tmp_path)
    # a finished one-epoch torus run already there: a two-epoch sweep resumes it, never retrains epoch 1
    train(runs[1].config, runs[1].run_dir)
    first_epoch = runs[1].run_dir / "checkpoints" / "epoch_1.pt"
    before = first_epoch.read_bytes()
    two_epochs = plan_sweep(_base(eval_store, epochs=2), ["cookie", "torus"], [7], tmp_path)
    assert [run_state(r) for r in two_epochs] == ["missing", "partial"]
    lines = []
    sweep(two_epochs, log=lines.append)
    assert [run_state(r) for r in two_epochs] == ["done", "done"]
    assert all(latest_checkpoint(r.run_dir).name == "epoch_2.pt" for r in two_epochs)
    assert first_epoch.read_bytes() == before
    stamps = [latest_checkpoint(r.run_dir).stat().st_mtime_ns for r in two_epochs]
    lines.clear()
    sweep(two_epochs, log=lines.append)
    assert lines == [f"{r.run_dir}: done, skipped" for r in two_epochs]
    assert [latest_checkpoint(r.run_dir).stat().st_mtime_ns for r in two_epochs] == stamps


@pytest.mark.slow
def test_a_run_with_other_settings_is_refused_before_any_training(eval_store, tmp_path):
    runs = plan_sweep(_base(eval_store), ["cookie", "torus"], [5], tmp_path)
    train(runs[1].config, runs[1].run_dir)
    other = plan_sweep(_base(eval_store, lr=0.01), ["cookie", "torus"], [5], tmp_path)
    with pytest.raises(PointADError, match=r"torus-5: holds a run with other settings \(differs in: lr\)"):
        sweep(other)
    assert latest_checkpoint(other[0].run_dir) is None  # the cookie run was not started either


@pytest.mark.slow
def test_cli_sweep_then_again_skips(eval_store, tmp_path):
    args = ["sweep", "--store", str(eval_store), "--dataset", MVTEC, "--classes", "cookie", "--seeds", "3",
            "--model", "tiny", "--epochs", "1", "--device", "cpu", "--runs-dir", str(tmp_path)]
    first = CliRunner().invoke(train_cli, args)
    assert first.exit_code == 0, first.output
    assert (tmp_path / f"{MVTEC}-cookie-3" / "checkpoints" / "epoch_1.pt").is_file()
    second = CliRunner().invoke(train_cli, args)
    assert second.exit_code == 0 and "done, skipped" in second.output


@pytest.mark.slow
def test_a_run_recorded_before_the_record_is_done_and_an_older_one_refused(eval_store, tmp_path):
    """config.json as `train run` wrote it before the record (no format, no version) keeps a sweep's run done;
    one older still (no 'train.store') stops the sweep before any training, in one line saying what to do."""
    runs = plan_sweep(_base(eval_store), ["cookie", "torus"], [4], tmp_path)
    train(runs[0].config, runs[0].run_dir)
    config_file = runs[0].run_dir / "config.json"
    written = json.loads(config_file.read_text())
    old = {key: written[key] for key in ("train", "model", "store_fingerprint", "rows", "render")}
    config_file.write_text(json.dumps(old, indent=2))
    assert run_state(runs[0]) == "done"
    del old["train"]["store"]
    config_file.write_text(json.dumps(old, indent=2))
    with pytest.raises(PointADError) as error:
        sweep(runs)
    assert str(error.value) == f"{config_file}: 'train': missing key(s) ['store']; {REWRITE}"
    assert latest_checkpoint(runs[1].run_dir) is None  # the torus run was not started
