"""The benchmarks and hand-run checks stay runnable: every script's imports resolve, none of them (nor a test)
edits sys.path or loads a module by file path, and benchmarks/gpu_bench.py (tiny model, CPU) and
benchmarks/store_io_bench.py (tiny rows, its own moto server) run end to end in --smoke mode.

gpu_bench's real use is one short device run with no second chance, so a rename in the library it calls must
fail here, not there. No timings are checked: only that every part ran, what it wrote, and the copied store.
"""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pointad.shared.store import open_store
from pointad.shared.store_schema import BY_FIELD

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("## Set-up", "## A. Vision tower alone", "## B. `eval report` end to end", "## C. Training epochs",
         "## D. Splat renderer", "## Goals (issue 12)")


SCRIPTS = sorted([*(ROOT / "benchmarks").glob("*.py"), *(ROOT / ".ci").glob("*.py")])


@pytest.mark.slow
def test_every_benchmark_and_check_script_imports():
    """Each script's module level (its imports, not its main) runs, in one fresh process."""
    assert {p.name for p in SCRIPTS} >= {"render_bench.py", "bench_visibility.py", "eval_bench.py", "mutation_check.py"}
    code = ("import runpy, sys\n"
            "for path in sys.argv[1:]:\n"
            "    runpy.run_path(path, run_name='imported_by_the_smoke_test')\n"
            "    print('imported', path)\n")
    done = subprocess.run([sys.executable, "-c", code, *map(str, SCRIPTS)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("imported ") == len(SCRIPTS), done.stdout


def _path_hacks(path):
    """(line, what) of each sys.path edit or file-path module load in one file."""
    loaders = {"spec_from_file_location", "SourceFileLoader", "run_path"}
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        name = {ast.Attribute: "attr", ast.Name: "id", ast.alias: "name"}.get(type(node))
        if isinstance(node, ast.Attribute) and node.attr == "path" and getattr(node.value, "id", None) == "sys":
            found.append((node.lineno, "sys.path"))
        elif name and getattr(node, name) in loaders:
            found.append((node.lineno, getattr(node, name)))
    return found


def test_no_script_or_test_edits_sys_path_or_loads_a_file_as_a_module():
    """Naive twins and shared helpers are imported as modules of the package (design §9), never by path."""
    files = [*SCRIPTS, *(ROOT / "tests").rglob("*.py")]
    hacks = {str(p.relative_to(ROOT)): found for p in files if (found := _path_hacks(p))}
    assert not hacks, hacks


@pytest.mark.slow
def test_gpu_bench_smoke_runs_every_part_and_copies_seed_rows(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    theirs = work / "synthetic" / "keep.txt"  # a folder of the name the script generates into: not its own
    theirs.parent.mkdir(parents=True)
    theirs.write_text("user data")
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks/gpu_bench.py"), "--smoke", "--workdir", str(work)],
                          capture_output=True, text=True, env=os.environ | {"OUT": str(out)}, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    missing = [part for part in PARTS if part not in done.stdout]
    assert not missing, f"sections missing from stdout: {missing}\n{done.stderr[-3000:]}"
    assert "FAILED" not in done.stdout, done.stdout

    assert theirs.read_text() == "user data" and sorted(p.name for p in theirs.parent.iterdir()) == ["keep.txt"]
    assert not list(work.glob("gpu-bench-data-*"))  # the generated data went to a folder of its own, now removed

    markdown = (out / "gpu_bench.md").read_text()
    assert all(part in markdown for part in PARTS)
    data = json.loads((out / "gpu_bench.json").read_text())
    assert data["setup"]["counts"] == {"cookie": 4, "dowel": 4}  # --smoke: 4 training and 4 evaluated copies
    assert data["report"]["samples"] == 4
    assert data["train"]["True"]["samples"] == 4 and data["train"]["False"]["samples"] == 4

    # every copied row holds exactly its seed row's arrays (row k of a class copies seed row k mod n)
    seed, copies = open_store(work / "seed.zarr"), open_store(work / "renders.zarr")
    by_id = {seed.identity(int(i))["sample_id"]: int(i) for i in seed.indices()}
    assert len(copies) == 8
    for row in copies.indices():
        identity = copies.identity(int(row))
        source = by_id[identity["sample_id"].split("/", 1)[1]]
        assert identity["label"] == seed.identity(source)["label"]
        got, want = copies.sample(int(row)), seed.sample(source)
        for name in ("image", "pixel", "visible", "valid", "knn", "rgb"):
            assert np.array_equal(getattr(got, name), getattr(want, name)), f"row {row}: {name} differs"


@pytest.mark.slow
def test_prepare_refuses_a_wheel_folder_it_did_not_make(tmp_path):
    wheels = tmp_path / "whl"
    wheels.mkdir()
    (wheels / "mine-1.0-py3-none-any.whl").write_text("a user's wheel")
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks/gpu_bench.py"), "--prepare", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1] == (f"{wheels}: exists and was not made by gpu_bench.py --prepare "
                                                    "(no .gpu-bench-wheels); choose another --prepare folder")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["mine-1.0-py3-none-any.whl", "whl"]


@pytest.mark.slow
def test_store_io_bench_smoke_measures_local_and_s3_and_counts_requests(tmp_path):
    """store_io_bench.py --smoke (issue 22.4) runs end to end: its own moto server and counting proxy, every
    rate, the builds, a request count per N; and it leaves nothing in its temporary folder."""
    temp = tmp_path / "temp"
    temp.mkdir()
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks/store_io_bench.py"), "--smoke", "--sizes", "2,12"],
                          capture_output=True, text=True, env=os.environ | {"TMPDIR": str(temp)}, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    rates = {tuple(cells[:2]): cells[2:] for cells in (line.strip("| ").split(" | ") for line in lines)
             if cells[0].endswith((" rows/s", " build s"))}
    assert set(rates) == {(what, processes) for what in ("write rows/s", "read rows/s") for processes in ("1", "2")} | {
        ("render build s", "1")}, done.stdout  # --smoke times the builds with one worker only
    for key, (local, remote, ratio) in rates.items():
        assert float(local) > 0 and float(remote) > 0, (key, local, remote)
        # the ratio is of the unrounded rates: within what rounding to 0.1 and to 0.01 allows
        slack = 0.005 + float(ratio) * (0.05 / float(local) + 0.05 / float(remote))
        assert abs(float(ratio) - float(remote) / float(local)) <= slack, (key, local, remote, ratio)
    counts = {int(cells[0]): cells[1:] for cells in (line.strip("| ").split(" | ") for line in lines)
              if cells[0].isdigit() and len(cells) == 5}
    assert sorted(counts) == [2, 12], done.stdout
    for _, writing, _, reading in counts.values():
        written, read = _by_kind(writing), _by_kind(reading)
        # a row written is at least one PUT per array of the row and one for its flag, a row read a GET per array
        assert written["PUT"] >= len(BY_FIELD) + 1 and read["GET"] >= len(BY_FIELD), (writing, reading)
        assert sum(written.values()) == pytest.approx(float(writing.split()[0]), abs=1e-3), writing
        assert sum(read.values()) == pytest.approx(float(reading.split()[0]), abs=1e-3), reading
    assert counts[2][1] == counts[12][1], counts  # requests per row written: not more with more rows stored
    # its own folder is gone, and so are the runtime folders of its rendering processes (render/rasterize.py)
    assert [p.name for p in temp.iterdir()] == []


def _by_kind(cell: str) -> dict[str, float]:
    """{"GET": 20.0, ...} of a request count as the bench prints it: '65 (GET 20, PUT 18, HEAD bucket 1)'."""
    inside = cell.split("(", 1)[1].rstrip(")")
    return {kind: float(number) for kind, number in (part.rsplit(" ", 1) for part in inside.split(", "))}
