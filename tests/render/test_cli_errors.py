"""`render` commands given a wrong kind of path or a non-finite number: one line `Error: ...`, exit 1,
nothing written (design §8)."""

from __future__ import annotations

import zarr
from click.testing import CliRunner

from pointad.render.build import build_store
from pointad.render.cli import render
from pointad.render.options import RenderOptions

TINY = ["--views", "2", "--image-size", "32", "--supersample", "1", "--max-points", "1024", "--point-size", "2"]


def _error(result) -> str:
    """The one error line; fails if there is a traceback or more than one line of error."""
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    return errors[0]


def test_synth_into_an_existing_file_is_one_line_and_the_file_is_kept(tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    error = _error(CliRunner().invoke(render, ["synth", "--out", str(target), "--classes", "cookie"]))
    assert error == f"Error: {target}: exists and is not a folder; give a folder (new or empty) for the dataset"
    assert target.read_text() == "mine"


def test_show_into_a_directory_says_it_is_a_directory(mvtec_dataset, tmp_path):
    _, entry = mvtec_dataset
    store = tmp_path / "tiny.zarr"
    build_store(entry, store, RenderOptions(views=2, image_size=32, supersample=1, max_points=1024, point_size=2),
                classes=["cookie"], splits=["validation"])
    folder = tmp_path / "pictures"
    folder.mkdir()
    error = _error(CliRunner().invoke(render, ["show", str(store), "--sample", "0", "--out", str(folder)]))
    assert error == f"Error: {folder}: is a directory; give a file name"
    assert list(folder.iterdir()) == [] and not [p for p in tmp_path.iterdir() if p.name.startswith(".pictures")]
    inside_a_file = tmp_path / "notes.txt"
    inside_a_file.write_text("mine")
    error = _error(CliRunner().invoke(render, ["show", str(store), "--sample", "0", "--out",
                                               str(inside_a_file / "sheet.png")]))
    assert error == f"Error: {inside_a_file}: is not a folder, cannot write sheet.png into it"


def test_non_finite_angle_shift_is_one_line_and_writes_no_store(mvtec_dataset, tmp_path):
    _, entry = mvtec_dataset
    for value in ("nan", "inf", "-inf"):
        out = tmp_path / f"{value}.zarr"
        result = CliRunner().invoke(render, ["build", "--format", "mvtec3d", "--root", str(entry.root), "--out",
                                             str(out), *TINY, "--angle-shift", value])
        assert _error(result) == f"Error: --angle-shift must be a finite number, got {float(value)}"
        assert not out.exists()
    result = CliRunner().invoke(render, ["build", "--format", "mvtec3d", "--root", str(entry.root), "--out",
                                         str(tmp_path / "p.zarr"), *TINY[:-1], "nan"])
    assert _error(result) == "Error: --point-size must be a finite number, got nan"


def test_schema_mismatch_message_names_a_remedy_that_works(mvtec_dataset, tmp_path):
    """The message used to send the user to 'render build', which fails the same way on that store."""
    _, entry = mvtec_dataset
    out = tmp_path / "old.zarr"
    args = ["build", "--format", "mvtec3d", "--root", str(entry.root), "--classes", "cookie", "--splits",
            "validation", *TINY]
    assert CliRunner().invoke(render, [*args, "--out", str(out)]).exit_code == 0
    zarr.open_group(out, mode="r+").attrs["schema_version"] = 3
    error = _error(CliRunner().invoke(render, [*args, "--out", str(out)]))
    assert error == (f"Error: {out}: schema_version 3, this version reads 1, 2; open it with the pointad version that "
                     "wrote it, or render into another --out")
    # the remedy it names works
    assert CliRunner().invoke(render, [*args, "--out", str(tmp_path / "new.zarr")]).exit_code == 0
