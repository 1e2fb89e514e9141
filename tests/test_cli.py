"""Command line: exit codes, one-line errors, files written (click's CliRunner, real readers)."""

from __future__ import annotations

from click.testing import CliRunner

from pointad.render.cli import render
from pointad.shared.cli import pointad


def test_umbrella_lists_the_three_stages():
    result = CliRunner().invoke(pointad, ["--help"])
    assert result.exit_code == 0
    for group in ("render", "train", "eval"):
        assert group in result.output


def test_synth_then_scan_reports_counts(tmp_path):
    runner = CliRunner()
    out = tmp_path / "syn"
    result = runner.invoke(pointad, ["render", "synth", "--out", str(out), "--format", "real3d", "--classes",
                                     "box,dome", "--defects", "bump", "--test-good", "1", "--train", "1"])
    assert result.exit_code == 0, result.output
    assert "wrote 6 real3d samples of 2 classes" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["box", "dome", "synthetic.json"]
    result = runner.invoke(render, ["scan", "--format", "real3d", "--root", str(out), "--splits", "test"])
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.output.splitlines() if line.startswith(("box", "dome"))]
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [("box", "test", "2", "1"), ("dome", "test", "2", "1")]


def test_scan_lists_a_broken_sample_and_exits_1(tmp_path):
    runner = CliRunner()
    out = tmp_path / "syn"
    runner.invoke(render, ["synth", "--out", str(out), "--classes", "box", "--defects", "dent", "--train", "0",
                           "--validation", "0"])
    broken = out / "box" / "test" / "dent" / "xyz" / "000.tiff"
    broken.write_bytes(b"garbage, not a tiff")
    result = runner.invoke(render, ["scan", "--format", "mvtec3d", "--root", str(out)])
    assert result.exit_code == 1
    assert f"failed: {broken}: unreadable TIFF" in result.output
    assert "box                  test              2" in result.output  # the two good samples still read
    assert runner.invoke(render, ["scan", "--format", "mvtec3d", "--root", str(out), "--keep-going"]).exit_code == 0


def test_errors_are_one_line_with_exit_code_1(tmp_path):
    runner = CliRunner()
    result = runner.invoke(pointad, ["render", "scan", "--dataset", "mvtec"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "Error: unknown dataset 'mvtec'; known: eyecandies, mvtec3d, real3d, synthetic, synthetic-eyecandies, "
        "synthetic-real3d (or use --format with --root)"]
    result = runner.invoke(pointad, ["render", "scan", "--format", "real3d", "--root", str(tmp_path / "none")])
    assert result.exit_code == 1 and "does not exist" in result.output and "Traceback" not in result.output
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    result = runner.invoke(render, ["synth", "--out", str(tmp_path / "full")])
    assert result.exit_code == 1 and "folder exists and is not empty" in result.output
