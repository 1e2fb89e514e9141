"""train run end to end on CPU with the tiny model (random weights) and a small real render store."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from click.testing import CliRunner

from pointad.shared.errors import CheckpointMismatchError, PointADError
from pointad.train.cli import train as train_cli
from pointad.train.loop import TrainConfig, Trainer, train
from pointad.train.model.checkpoint import load_checkpoint
from pointad.train.run_record import REWRITE, check_run_dir, read_metrics, read_run_record, write_run_record

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def train_store(cookie_store):
    """Six cookie test samples (one good, five defects), three views at CLIP's 336 px (tests/conftest.py)."""
    return cookie_store


def _config(store, **changes):
    return TrainConfig(**{"store": str(store), "class_name": "cookie", "model": "tiny", "epochs": 2,
                          "batch_size": 4, **changes})


def _prompts(path):
    state = load_checkpoint(path)["prompts"]
    return torch.cat([state["ctx"].flatten(), state["deep"].flatten()])


@pytest.mark.slow
def test_cached_and_uncached_training_give_the_same_first_epoch(train_store, tmp_path):
    cached = Trainer(_config(train_store), tmp_path / "a").run_epoch(1)
    uncached = Trainer(_config(train_store, feature_cache=False), tmp_path / "b").run_epoch(1)
    for term in ("total", "3d_global", "3d_local", "2d_global", "2d_local"):
        assert abs(cached[term] - uncached[term]) < 1e-5, (term, cached[term], uncached[term])
    assert (tmp_path / "a" / "features.zarr").exists() and not (tmp_path / "b" / "features.zarr").exists()


@pytest.mark.slow
def test_training_lowers_the_loss_and_raises_point_auroc(train_store, tmp_path):
    # The tiny model has random weights, so its global features carry no anomaly signal; the
    # local terms alone show that the prompts learn to rank the training class's points.
    trainer = Trainer(_config(train_store, loss_terms="3d_local,2d_local"), tmp_path)
    before = trainer.evaluate()
    for epoch in range(1, 7):
        trainer.run_epoch(epoch)
    after = trainer.evaluate()
    print(f"untrained: loss {before['total']:.4f} point AUROC {before['point_auroc']:.3f}; "
          f"trained 6 epochs: loss {after['total']:.4f} point AUROC {after['point_auroc']:.3f}")
    assert after["total"] < before["total"]
    assert after["point_auroc"] > before["point_auroc"]


@pytest.mark.slow
def test_clip_is_frozen_and_unchanged_by_training(train_store, tmp_path):
    trainer = Trainer(_config(train_store), tmp_path)
    before = {k: v.clone() for k, v in trainer.backbone.state_dict().items()}
    trainer.run_epoch(1)
    assert not any(p.requires_grad for p in trainer.backbone.parameters())
    for name, value in trainer.backbone.state_dict().items():
        assert torch.equal(value, before[name]), name


@pytest.mark.slow
def test_run_writes_checkpoints_metrics_and_config(train_store, tmp_path):
    result = train(_config(train_store), tmp_path / "run")
    assert result.epochs_run == [1, 2]
    lines = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert lines[0] == "epoch,total,3d_global,3d_local,2d_global,2d_local,point_auroc,seconds"
    assert [line.split(",")[0] for line in lines[1:]] == ["1", "2"]
    rows = read_metrics(tmp_path / "run")
    assert [(r.epoch, r.losses, r.point_auroc) for r in rows] == [
        (i + 1, {k: v for k, v in m.items() if k not in ("point_auroc", "seconds")}, m["point_auroc"])
        for i, m in enumerate(result.metrics)]
    record = read_run_record(tmp_path / "run")
    assert record.train == _config(train_store) and record.model.label == "tiny (random weights)"
    assert len(record.rows) == 6 and record.render["point_size"] == 2 and record.imported is None
    payload = load_checkpoint(tmp_path / "run" / "checkpoints" / "epoch_2.pt")
    assert payload["model"]["label"] == "tiny (random weights)" and payload["config"]["class_name"] == "cookie"
    with pytest.raises(PointADError, match="already holds checkpoints; pass --resume"):
        train(_config(train_store), tmp_path / "run")


@pytest.mark.slow
def test_resume_refuses_other_settings_and_other_models(train_store, tmp_path):
    train(_config(train_store, epochs=1), tmp_path / "run")
    with pytest.raises(CheckpointMismatchError, match=r"made with other settings \(lr\)"):
        train(_config(train_store, epochs=2, lr=5e-3), tmp_path / "run", resume=True)
    trainer = Trainer(_config(train_store, layers=(2, 4)), tmp_path / "other")
    with pytest.raises(CheckpointMismatchError, match="epoch_1.pt: made for model"):
        trainer.restore(tmp_path / "run" / "checkpoints" / "epoch_1.pt")


@pytest.mark.slow
def test_sigkill_after_epoch_1_then_resume_equals_uninterrupted(train_store, tmp_path):
    args = ["-m", "pointad.train.cli", "run", "--store", str(train_store), "--class", "cookie", "--model", "tiny",
            "--epochs", "3", "--device", "cpu"]
    subprocess.run([sys.executable, *args, "--out", str(tmp_path / "full")], check=True, env=ENV,
                   capture_output=True)
    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, *args, "--out", str(killed)], env=ENV, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "epoch_1.pt").exists() and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (killed / "checkpoints" / "epoch_3.pt").exists(), "the kill should land before the end"
    subprocess.run([sys.executable, *args, "--out", str(killed), "--resume"], check=True, env=ENV,
                   capture_output=True)
    difference = (_prompts(killed / "checkpoints" / "epoch_3.pt") -
                  _prompts(tmp_path / "full" / "checkpoints" / "epoch_3.pt")).abs().max()
    assert difference == 0, f"resumed run differs by {difference}"


@pytest.mark.slow
def test_two_gloo_processes_match_one(train_store, tmp_path):
    args = ["run", "--store", str(train_store), "--class", "cookie", "--model", "tiny", "--epochs", "2",
            "--device", "cpu", "--batch-size", "4"]
    subprocess.run([sys.executable, "-m", "pointad.train.cli", *args, "--out", str(tmp_path / "one")], check=True, env=ENV,
                   capture_output=True)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", str(29500 + os.getpid() % 1000), "-m", "pointad.train.cli", *args,
                          "--out", str(tmp_path / "two")], env=ENV, capture_output=True, text=True)
    assert two.returncode == 0, two.stderr[-2000:]
    difference = (_prompts(tmp_path / "one" / "checkpoints" / "epoch_2.pt") -
                  _prompts(tmp_path / "two" / "checkpoints" / "epoch_2.pt")).abs().max()
    assert difference < 1e-5, f"2 processes differ from 1 by {difference}"
    # metrics.csv holds the global values (losses reduced, AUROC over every rank's points), not rank 0's shard
    one, two = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    assert [row["epoch"] for row in two] == ["1", "2"]
    for a, b in zip(one, two):
        for name in ("total", "3d_global", "3d_local", "2d_global", "2d_local"):
            assert abs(float(a[name]) - float(b[name])) <= 2e-5 * max(1.0, abs(float(a[name]))), (name, a, b)
        assert abs(float(a["point_auroc"]) - float(b["point_auroc"])) < 1e-6, (a["point_auroc"], b["point_auroc"])


def _metrics(run_dir):
    with open(run_dir / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_missing_weights_stop_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # no open_clip / Hugging Face cache to find
    result = CliRunner().invoke(train_cli, ["run", "--store", str(tmp_path / "absent.zarr"), "--class", "cookie"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "not found" in lines[0] and "--clip-weights" in lines[0], result.output


@pytest.mark.slow
def test_features_command_fills_a_cache_that_run_uses(train_store, tmp_path):
    runner = CliRunner()
    cache = tmp_path / "features.zarr"
    result = runner.invoke(train_cli, ["features", "--store", str(train_store), "--model", "tiny", "--out", str(cache),
                                       "--device", "cpu"])
    assert result.exit_code == 0 and "tiny (random weights)" in result.output, result.output
    stamp = (cache / "zarr.json").stat().st_mtime_ns
    result = runner.invoke(train_cli, ["run", "--store", str(train_store), "--class", "cookie", "--model", "tiny",
                                       "--epochs", "1", "--features", str(cache), "--out", str(tmp_path / "run"),
                                       "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert (cache / "zarr.json").stat().st_mtime_ns == stamp  # reused, not recomputed
    assert not (tmp_path / "run" / "features.zarr").exists()
    assert "model tiny (random weights)" in result.output


@pytest.mark.slow
def test_model_auto_falls_back_to_tiny_loudly(train_store, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("POINTAD_CACHE", str(tmp_path / "cache"))
    result = CliRunner().invoke(train_cli, ["run", "--store", str(train_store), "--class", "cookie", "--model", "auto",
                                            "--epochs", "1", "--out", str(tmp_path / "run"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "WARNING: using the tiny model with RANDOM weights" in result.output
    assert "model tiny (random weights)" in result.output


@pytest.mark.slow
def test_dataloader_workers_and_dpam_depth(train_store, tmp_path):
    """DataLoader workers read the same batches as the in-process loop; the DPAM depth reaches the model."""
    inline = Trainer(_config(train_store), tmp_path / "a").run_epoch(1)
    workers = Trainer(_config(train_store), tmp_path / "b", loader_workers=2).run_epoch(1)
    assert abs(inline["total"] - workers["total"]) < 1e-6
    shallow = Trainer(_config(train_store, dpam_start=4), tmp_path / "c")
    assert shallow.backbone.config.dual_path_blocks == (4,)
    assert shallow.run_epoch(1)["total"] != inline["total"]


def test_a_run_folder_is_new_empty_a_run_or_its_leftovers(tmp_path):
    """check_run_dir: a folder holding only what a run writes (an interrupted first run's feature cache, our temp
    files) is a run folder; one holding anything else (`--out .` in a folder of the user's) is refused, naming it."""
    folder = tmp_path / "run"
    check_run_dir(folder)  # absent
    folder.mkdir()
    check_run_dir(folder)  # empty
    (folder / "features.zarr").mkdir()
    (folder / ".config.json.x1y2.json").write_text("{")
    (folder / ".features.zarr.pointad-lock").write_text("")
    check_run_dir(folder)
    (folder / "notes.txt").write_text("mine")
    (folder / ".git").mkdir()
    with pytest.raises(PointADError, match=r"run: holds files that are not a training run's \(\.git, notes\.txt\)"):
        check_run_dir(folder)
    (folder / "config.json").write_text('{"train": {}}')  # a damaged record of ours: refused, saying what to do
    with pytest.raises(PointADError, match=r"config\.json: 'train': missing key\(s\) \['store'.*; move it away"):
        check_run_dir(folder)
    (folder / "config.json").unlink()
    write_run_record(folder, _record())
    check_run_dir(folder)  # a run's folder may hold the user's notes


def _record():
    from pointad.train.model.model_config import load_model_config
    from pointad.train.run_record import RunRecord
    return RunRecord(train=_config("renders.zarr"), model=load_model_config("tiny"), store_fingerprint="f", rows=(0,))


@pytest.mark.slow
def test_resume_continues_a_run_folder_written_before_the_record(train_store, tmp_path):
    """config.json and metrics.csv as the code before the record wrote them (no format or version; numbers to 6
    digits): --resume reads them, goes on and writes the record; a layout older still (no 'train.store') is
    refused in one line, and doing what it says works."""
    from pointad.shared.store import store_fingerprint
    from pointad.train.model.model_config import load_model_config
    run = tmp_path / "run"
    config = _config(train_store, epochs=1)
    train(config, run)
    written = json.loads((run / "config.json").read_text())
    old = {"train": config.identity() | {"epochs": config.epochs, "store": config.store},  # train/loop.py, 4507f32
           "model": load_model_config("tiny").to_dict(), "store_fingerprint": store_fingerprint(train_store),
           "rows": written["rows"], "render": written["render"]}
    (run / "config.json").write_text(json.dumps(old, indent=2))
    with open(run / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    with open(run / "metrics.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: v if k == "epoch" else f"{float(v):.6g}" for k, v in row.items()} for row in rows)
    result = train(_config(train_store, epochs=2), run, resume=True)
    assert result.epochs_run == [2]
    assert [r.epoch for r in read_metrics(run)] == [1, 2]
    assert json.loads((run / "config.json").read_text())["version"] == 1
    assert read_run_record(run).train == _config(train_store, epochs=2)
    older = json.loads((run / "config.json").read_text())
    for key in ("format", "version", "render"):
        older.pop(key)
    older["train"].pop("store")  # train/loop.py before d4b0eaa
    (run / "config.json").write_text(json.dumps(older))
    with pytest.raises(PointADError) as error:
        train(_config(train_store, epochs=3), run, resume=True)
    message = str(error.value)
    assert "\n" not in message and message == f"{run / 'config.json'}: 'train': missing key(s) ['store']; {REWRITE}"
    shutil.move(run / "config.json", tmp_path / "config.json.old")  # as the line says
    assert train(_config(train_store, epochs=3), run, resume=True).epochs_run == [3]
    assert read_run_record(run).train == _config(train_store, epochs=3)
