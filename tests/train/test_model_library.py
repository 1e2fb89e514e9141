"""The model library seam (train/model/): what scoring needs, without the training loop or a command line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pointad.shared.errors import ConfigError
from pointad.train.model.model_config import load_model_config, model_config_for

TRAINING_SIDE = ("pointad.train.loop", "pointad.train.cli", "pointad.train.sweep", "pointad.train.data",
                 "pointad.train.losses", "pointad.train.features", "pointad.train.distributed")


def _modules_after(imports: str) -> set[str]:
    code = f"import sys\n{imports}\nprint('\\n'.join(sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(done.stdout.split())


@pytest.mark.slow
def test_scoring_and_detect_import_no_training_code():
    loaded = _modules_after("import pointad.eval.report, pointad.eval.scoring, pointad.eval.runs, "
                            "pointad.eval.detect, pointad.eval.mutual")
    assert "pointad.train.model.backbone" in loaded  # the check would pass vacuously if nothing were imported
    assert sorted(loaded & set(TRAINING_SIDE)) == []


def test_eval_command_line_loads_no_training_code_until_train_missing():
    loaded = _modules_after("import pointad.eval.cli")
    assert "pointad.eval.cli" in loaded
    assert sorted(loaded & set(TRAINING_SIDE)) == []


@pytest.mark.slow
def test_metrics_import_is_light():
    loaded = _modules_after("import pointad.eval.metrics")
    assert "pointad.eval.metrics" in loaded
    assert sorted(loaded & {"torch", "open3d", "matplotlib", "open_clip", "zarr"}) == []


def test_model_config_for_taps_and_dual_path():
    plain = load_model_config("tiny")
    assert model_config_for("tiny") == plain
    top = plain.dual_path_blocks[-1]
    changed = model_config_for("tiny", layers=(1, 2), dpam_start=2)
    assert changed.tap_layers == (1, 2)
    assert changed.dual_path_blocks == tuple(range(2, top + 1))  # from the given block to the top
    assert model_config_for("tiny", dpam_start=0).dual_path_blocks == ()
    with pytest.raises(ConfigError, match="tap_layers"):
        model_config_for("tiny", layers=(2, 1))
