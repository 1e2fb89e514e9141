"""Fixtures of the evaluation tests that pin numbers: one fixed tiny run, shared by their modules."""

from __future__ import annotations

import pytest

MVTEC, REAL3D = "synthetic-mvtec3d", "synthetic-real3d"


@pytest.fixture(scope="session")
def numbers_run(eval_store, tmp_path_factory):
    """A 1-epoch tiny run (random weights, default seed) trained on the MVTec-format cookie test rows."""
    from pointad.train.loop import TrainConfig, train
    run_dir = tmp_path_factory.mktemp("numbers-run") / "run"
    train(TrainConfig(store=str(eval_store), class_name="cookie", dataset=MVTEC, model="tiny", epochs=1), run_dir)
    return run_dir
