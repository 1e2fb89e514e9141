"""README "Your own scans": its commands run as written, from a folder of scans to a report, and its
`datasets.yaml` example is a valid registry whose options the folder format takes."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

README = Path(__file__).resolve().parents[1] / "README.md"


def section() -> str:
    text = README.read_text()
    start = text.index("\n## Your own scans\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", section(), re.S)


@pytest.mark.slow
def test_the_commands_run_as_written_and_the_report_prints(tmp_path):
    (commands,) = blocks("bash")
    lines = [line for line in commands.splitlines() if line.strip()]
    assert lines and all(line.startswith("pointad ") for line in lines), lines
    env = {**os.environ, "POINTAD_CACHE": str(tmp_path / "cache")}
    env.pop("POINTAD_REGISTRY", None)
    for line in lines:
        result = subprocess.run([sys.executable, "-c", "from pointad.shared.cli import main; main()",
                                 *shlex.split(line)[1:]], cwd=tmp_path, env=env, capture_output=True, text=True,
                                timeout=600)
        assert result.returncode == 0, (line, result.stdout[-2000:], result.stderr[-3000:])
        if " scan " in line:
            found = [x for x in result.stdout.splitlines() if x.startswith("found: ")]
            assert len(found) == 2 and all(s in found[0] for s in (".e57", ".las", ".laz")), result.stdout
            assert "samples read, 0 failed" in result.stdout
    report = (tmp_path / "scans-report.md").read_text()
    assert "| dome |" in report and "| **mean** |" in report and "model: tiny (random weights)" in report, report


@pytest.mark.slow
def test_the_registry_example_is_valid_and_taken(tmp_path):
    from pointad.render.readers import preprocess_options
    from pointad.shared.registry import load_registry
    (example,) = blocks("yaml")
    path = tmp_path / "my_datasets.yaml"
    path.write_text(example)
    entry = load_registry(path)["brackets"]
    assert yaml.safe_load(example)["datasets"]["brackets"]["format"] == "folder"
    folder = entry.folder_options("any")
    assert (folder.units, folder.label_property) == ("m", "anomaly")
    options = preprocess_options(entry, "any")
    assert (options.background, options.plane_distance, options.cluster_eps) == ("plane", 0.0005, 0.002)
