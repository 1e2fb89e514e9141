"""Tampered files: small files that claim huge or malformed contents (issue 21, items 8, 9, 10).

A few hundred bytes of YAML aliases, a `zarr.json` whose shape says 10^9 rows, store attributes of the wrong
type, a checkpoint claiming a model of width 10^9: each is refused in one line naming the file, before any
allocation the claim asks for. Where a regression would crash or exhaust the machine, the command runs as
its own process under a memory limit and a timeout, so the test fails instead.

The limit is on RLIMIT_DATA (heap and anonymous mappings: where numpy, torch and Python allocate), not
RLIMIT_AS: importing torch's CUDA build maps ~3.3 GB of address space it never touches, so an address
space limit of a few GiB stops the import itself. A healthy `pointad` command here takes under 1 GB of data.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pointad.shared.errors import ConfigError
from pointad.shared.registry import load_registry

DATA_LIMIT = 3 * 2**30  # bytes of heap a tampered file may make a command take (a healthy one takes < 1 GB)
FUZZ = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def pointad(args, cwd: Path, timeout: float = 120, **env) -> subprocess.CompletedProcess:
    """`pointad ARGS` as its own process with at most DATA_LIMIT bytes of heap; TimeoutExpired past `timeout`."""
    def limit():
        resource.setrlimit(resource.RLIMIT_DATA, (DATA_LIMIT, DATA_LIMIT))
    return subprocess.run([sys.executable, "-c", "from pointad.shared.cli import main; main()", *map(str, args)],
                          cwd=cwd, env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout,
                          preexec_fn=limit)


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """The one `Error: ...` line of a command that failed as it should: exit 1, no traceback, no other error."""
    assert result.returncode == 1, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr and "MemoryError" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert len(errors[0]) < 400, errors[0]
    return errors[0]


# --- datasets.yaml (item 8) -------------------------------------------------------------------------------

def alias_bomb(levels: int, fan_out: int = 9) -> str:
    """Level i lists level i-1 `fan_out` times: fan_out^levels strings from a few hundred bytes."""
    lines = ["l0: &l0 [" + ", ".join(["lol"] * fan_out) + "]"]
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * fan_out) + "]" for i in range(1, levels)]
    return "\n".join(lines) + f"\ndatasets:\n  a: {{format: mvtec3d, root: x, classes: *l{levels - 1}}}\n"


@pytest.mark.parametrize("name, text, reason", [
    # 488 bytes: 3 GB and 59 s before the fix (the refusal repr()'d the whole value); one level more ran out of memory
    ("billion laughs", alias_bomb(9), "expands its aliases to more than 1,000,000 nodes and characters"),
    ("ten billion laughs", alias_bomb(10), "expands its aliases to more than 1,000,000 nodes and characters"),
    ("deep nesting", "datasets:\n  a: " + "[" * 100_000 + "]" * 100_000 + "\n", "nests deeper than 32 levels"),
    ("alias inside its anchor", "x: &a [1, *a]\ndatasets: {a: {format: mvtec3d, root: x, classes: *a}}\n",
     "has an alias inside its own anchor"),
])
def test_registry_bombs_are_one_line_in_bounded_memory(tmp_path, name, text, reason):
    """`pointad render datasets` with each bomb as POINTAD_REGISTRY: one line naming the file and the reason."""
    registry = tmp_path / "datasets.yaml"
    registry.write_text(text)
    line = one_error_line(pointad(["render", "datasets"], tmp_path, timeout=60, POINTAD_REGISTRY=str(registry)))
    assert line.startswith(f"Error: {registry}: registry file {reason}"), line


@st.composite
def yaml_bombs(draw) -> str:
    """Registries with chains of anchors (fan-out, levels), nesting, optional self-reference and long scalars."""
    fan_out, levels = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    depth, width = draw(st.integers(0, 60)), draw(st.integers(1, 2000))
    leaf = draw(st.sampled_from(["lol", "x" * width, "{format: mvtec3d, root: r}", "[cookie]"]))
    lines = [f"l0: &l0 " + "[" * depth + leaf + "]" * depth]
    for i in range(1, levels):
        items = [f"*l{i - 1}"] * fan_out + ([f"*l{i}"] if draw(st.booleans()) and i == levels - 1 else [])
        lines.append(f"l{i}: &l{i} [" + ", ".join(items) + "]")
    where = draw(st.sampled_from(["classes", "options", "view_plans", "description", "entry"]))
    top = f"*l{levels - 1}"
    entry = top if where == "entry" else f"{{format: mvtec3d, root: x, {where}: {top}}}"
    return "\n".join(lines) + f"\ndatasets:\n  a: {entry}\n"


@FUZZ
@given(text=yaml_bombs())
def test_fuzzed_alias_and_depth_bombs_give_entries_or_one_line(tmp_path, text):
    """Whatever the aliases and nesting, the registry reader returns entries or one ConfigError line naming the
    file, short, with no RecursionError or MemoryError (each example is bounded by MAX_YAML_EXPANDED)."""
    path = tmp_path / "datasets.yaml"
    path.write_text(text)
    try:
        load_registry(path)
    except ConfigError as exc:
        message = str(exc)
        assert message.startswith(f"{path}: ") and "\n" not in message and len(message) < 400, message[:500]
