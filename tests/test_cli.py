"""Command line: exit codes, one-line errors, files written (click's CliRunner, real readers)."""

from __future__ import annotations

import dataclasses
import re

import click
import pytest
from click.testing import CliRunner

from pointad.eval.options import MutualOptions, ReportConfig
from pointad.render.cli import render
from pointad.render.options import RenderOptions
from pointad.render.synthetic import SyntheticSpec
from pointad.shared import limits
from pointad.shared.cli import pointad
from pointad.shared.command import ListOption
from pointad.shared.command import _Bounded as Bounded
from pointad.shared.registry import FORMATS
from pointad.train.options import TrainConfig


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
        "Error: unknown dataset 'mvtec'; known: eyecandies, folder, mvtec3d, real3d, synthetic, synthetic-eyecandies, "
        "synthetic-folder, synthetic-real3d (or use --format with --root)"]
    result = runner.invoke(pointad, ["render", "scan", "--format", "real3d", "--root", str(tmp_path / "none")])
    assert result.exit_code == 1 and "does not exist" in result.output and "Traceback" not in result.output
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    result = runner.invoke(render, ["synth", "--out", str(tmp_path / "full")])
    assert result.exit_code == 1 and "folder exists and is not empty" in result.output


def test_an_error_naming_a_path_with_a_newline_or_escape_stays_one_printable_line(tmp_path):
    hostile = tmp_path / "a\nError: forged\x1b[31m.zarr"
    result = CliRunner().invoke(pointad, ["render", "info", str(hostile)])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "\x1b" not in result.output
    assert "a\\nError: forged\\x1b[31m.zarr" in lines[0]


def _commands(group=pointad, path=()):
    """(path, command) for every command of every group under `pointad`, lazy ones included."""
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if isinstance(command, click.Group):
            yield from _commands(command, (*path, name))
        else:
            yield (*path, name), command


def _options(command):
    return [p for p in command.params if isinstance(p, click.Option) and p.name != "help"]


def _names(option):
    """The names an option goes by: its parameter name and its long option names, as identifiers."""
    return {option.name} | {o.lstrip("-").replace("-", "_") for o in option.opts if o.startswith("--")}


ALL_COMMANDS = dict(_commands())

# command -> the dataclasses its options' defaults come from: (class, option prefix, {option: field})
DEFAULT_SOURCES = {
    ("render", "build"): [(RenderOptions, "", {})],
    ("render", "synth"): [(SyntheticSpec, "", {})],
    ("train", "run"): [(TrainConfig, "", {})],
    ("train", "sweep"): [(TrainConfig, "", {})],
    ("train", "features"): [(TrainConfig, "", {})],
    ("train", "import-released"): [(TrainConfig, "", {})],
    ("eval", "report"): [(ReportConfig, "", {}), (MutualOptions, "mutual_", {"rescore_k": "rescore_ks"}),
                         (TrainConfig, "train_", {})],
    ("detect",): [(RenderOptions, "", {})],
}


def test_the_walk_sees_every_group_and_detect_once():
    assert {("render", "build"), ("train", "run"), ("eval", "report"), ("detect",)} <= set(ALL_COMMANDS)
    assert [path for path in ALL_COMMANDS if path[-1] == "detect"] == [("detect",)]  # registered once
    result = CliRunner().invoke(pointad, ["eval", "--help"])
    assert result.exit_code == 0 and "pointad detect" in result.output  # eval's help says where it is


def test_every_option_has_help_text():
    missing = [f"{' '.join(path)} {option.opts[0]}" for path, command in ALL_COMMANDS.items()
               for option in _options(command) if not (option.help or "").strip()]
    missing += [f"{' '.join(path)} {option.opts[0]}" for path, group in [((), pointad), (("render",), render)]
                for option in _options(group) if not (option.help or "").strip()]
    assert missing == []


def test_list_options_share_one_style():
    """Every option taking several values is a `ListOption` (repeatable, commas split); no single-value
    option takes a comma list in disguise."""
    lists, disguised = [], []
    for path, command in ALL_COMMANDS.items():
        for option in _options(command):
            where = f"{' '.join(path)} {option.opts[0]}"
            if option.multiple:
                lists.append(where)
                assert isinstance(option, ListOption), f"{where}: multiple=True without shared.command.list_option"
            elif re.search(r"\bcommas?\b|comma-separated|\brepeat", (option.help or "").lower()):  # not "command"
                disguised.append(where)
    assert disguised == []
    assert {"train run --layers", "eval report --classes", "eval report --checkpoints", "render build --splits",
            "train sweep --seeds"} <= set(lists)


def test_a_list_option_takes_repeats_and_commas_alike(tmp_path):
    result = CliRunner().invoke(pointad, ["render", "synth", "--out", str(tmp_path / "a"), "--classes", "box",
                                          "--classes", "dome,torus", "--defects", "bump", "--train", "0",
                                          "--validation", "0", "--test-good", "0"])
    assert result.exit_code == 0, result.output
    assert "wrote 3 mvtec3d samples of 3 classes" in result.output
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["box", "dome", "synthetic.json", "torus"]


@pytest.mark.parametrize("path", sorted(DEFAULT_SOURCES), ids=" ".join)
def test_option_defaults_are_the_dataclass_defaults(path):
    """An option named after a dataclass field defaults to that field's default (as the command receives it),
    or to None: not given, the dataclass (or a source its help names) decides."""
    command = ALL_COMMANDS[path]
    received = command.make_context(path[-1], [], resilient_parsing=True).params  # what the body gets, no options
    checked, wrong = [], []
    for option in _options(command):
        for cls, prefix, renames in DEFAULT_SOURCES[path]:
            fields = {f.name: f for f in dataclasses.fields(cls)}
            names = {renames.get(n, n) for n in _names(option)}
            names = {n[len(prefix):] for n in names if n.startswith(prefix)}
            field = next((fields[n] for n in sorted(names) if n in fields), None)
            if field is None or field.default is dataclasses.MISSING:
                continue
            value = received[option.name]
            if isinstance(value, tuple) and isinstance(field.default, str):
                value = ",".join(value)  # a list option feeding a comma-list field (--loss-terms)
            checked.append(option.name)
            if value not in (None, ()) and value != field.default:
                wrong.append(f"{option.opts[0]}: {value!r}, {cls.__name__}.{field.name} = {field.default!r}")
            break
    assert wrong == []
    assert len(checked) >= {("render", "build"): 10, ("render", "synth"): 8, ("eval", "report"): 10}.get(path, 2)


# commands whose number options are not bounded yet (SyntheticSpec declares no ranges)
UNBOUNDED: set = set()


def test_every_number_option_is_bounded():
    """Every int or float option (a list option's items too) has a `shared.limits` range: shown in --help,
    NaN and inf refused, a value outside it one `Error:` line."""
    loose = [f"{' '.join(path)} {option.opts[0]}" for path, command in ALL_COMMANDS.items() if path not in UNBOUNDED
             for option in _options(command) if not (option.count or option.is_flag)
             and isinstance(getattr(option, "item_type", option.type), (click.types.IntParamType,
                                                                          click.types.FloatParamType))
             and not isinstance(getattr(option, "item_type", option.type), Bounded)]
    assert loose == []


@pytest.mark.parametrize("path", sorted(DEFAULT_SOURCES), ids=" ".join)
def test_option_ranges_are_the_dataclass_ranges(path):
    """An option named after a dataclass field with a declared range takes exactly that range (`range_type`),
    as it takes its default; --rescore-k also takes 0 (no re-scoring)."""
    if path in UNBOUNDED:
        return
    command = ALL_COMMANDS[path]
    checked, wrong = [], []
    for option in _options(command):
        if option.name == "cache_memory":  # a size with units ('8GiB'): its callback checks the declared range
            continue
        for cls, prefix, renames in DEFAULT_SOURCES[path]:
            names = {renames.get(n, n) for n in _names(option)}
            names = sorted(n[len(prefix):] for n in names if n.startswith(prefix))
            declared = [bound for n in names if (bound := _declared(cls, n)) is not None]
            if not declared:
                continue
            rng = getattr(getattr(option, "item_type", option.type), "rng", None)
            wanted = declared[0] if option.name != "rescore_k" else dataclasses.replace(declared[0], lo=0)
            checked.append(option.name)
            if rng != wanted:
                wrong.append(f"{option.opts[0]}: {rng}, {cls.__name__} declares {wanted}")
            break
    assert wrong == []
    assert len(checked) >= {("render", "build"): 8, ("eval", "report"): 6, ("detect",): 3}.get(path, 1), checked


def _declared(cls, name):
    try:
        return limits.bound(cls, name)[1]
    except ValueError:
        return None


def test_format_is_a_dataset_format_only():
    for path, command in ALL_COMMANDS.items():
        for option in _options(command):
            if "--format" in option.opts:
                assert set(option.type.choices) <= set(FORMATS), " ".join(path)


def test_verbose_logs_at_info_to_stderr(tmp_path):
    args = ["render", "synth", "--out", str(tmp_path / "s"), "--classes", "box", "--defects", "bump",
            "--train", "0", "--validation", "0", "--test-good", "0"]
    quiet = CliRunner().invoke(pointad, args)
    assert quiet.exit_code == 0, quiet.output
    assert "INFO" not in quiet.stderr
    loud = CliRunner().invoke(pointad, ["-v", *args[:2], "--out", str(tmp_path / "v"), *args[4:]])
    assert loud.exit_code == 0, loud.output
    assert f"INFO pointad.render.synthetic: writing 1 mvtec3d samples of 1 classes into {tmp_path / 'v'}" \
        in loud.stderr


def test_first_use_generation_shows_a_progress_bar(tmp_path, monkeypatch):
    registry = tmp_path / "datasets.yaml"
    registry.write_text("datasets:\n  tiny-syn:\n    format: mvtec3d\n    generate: {format: mvtec3d, classes: [box], "
                        "defects: [bump, dent], train: 0, validation: 0, test_good: 1}\n")
    monkeypatch.setenv("POINTAD_REGISTRY", str(registry))
    monkeypatch.setenv("POINTAD_CACHE", str(tmp_path / "cache"))
    first = CliRunner().invoke(pointad, ["render", "scan", "--dataset", "tiny-syn"])
    assert first.exit_code == 0, first.output
    assert "generate tiny-syn (first use)" in first.stderr and "| 0/3 [" in first.stderr  # bar over 3 samples
    again = CliRunner().invoke(pointad, ["render", "scan", "--dataset", "tiny-syn"])
    assert again.exit_code == 0 and "generate" not in again.stderr  # generated once, cached


def test_train_missing_options_need_train_missing():
    result = CliRunner().invoke(pointad, ["eval", "report", "--train-epochs", "2", "--train-prompt", "coop"])
    assert result.exit_code == 2
    assert "--train-epochs and --train-prompt apply to --train-missing only" in result.output


def test_choices_stated_in_the_light_modules_match_the_code_using_them():
    from pointad.eval.options import REPORT_FORMATS
    from pointad.eval.report import FORMATS as REPORT_WRITERS
    from pointad.render.options import RENDERERS
    from pointad.render.rasterize import RENDERERS as OPEN3D_RENDERERS
    assert tuple(REPORT_WRITERS) == REPORT_FORMATS
    assert RENDERERS == (*OPEN3D_RENDERERS, "splat")
