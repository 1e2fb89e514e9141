"""A store rendered at another size than the model's input (issue found 2026-12-08: a traceback from deep in the
vision tower). Every command that feeds a store's images to the model stops in one line naming the store and
both sizes, before any weights load, and leaves nothing at --out."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from pointad.shared.cli import pointad
from pointad.shared.store import open_store


def _cloud(mvtec_dataset):
    _, entry = mvtec_dataset
    return next(iter(sorted((entry.root / "cookie" / "test").glob("*/xyz/*.tiff"))))


@pytest.mark.parametrize("command", ["train run", "train features", "eval report clip-rendering",
                                     "eval report mutual", "detect mutual"])
def test_a_store_of_another_image_size_is_one_line_naming_it(command, cookie_splat_48, mvtec_dataset, tmp_path):
    store = str(cookie_splat_48)
    dataset = open_store(cookie_splat_48).identity(0)["dataset"]
    out = tmp_path / "out"
    args = {
        "train run": ["train", "run", "--store", store, "--class", "cookie", "--model", "tiny", "--epochs", "1",
                      "--out", str(out)],
        "train features": ["train", "features", "--store", store, "--dataset", dataset, "--class", "cookie",
                           "--model", "tiny", "--out", str(out)],
        "eval report clip-rendering": ["eval", "report", "--store", store, "--method", "clip-rendering",
                                         "--model", "tiny", "--setting", "cross-dataset", "--dataset", dataset,
                                         "--out", str(out)],
        "eval report mutual": ["eval", "report", "--store", store, "--method", "mutual-scoring", "--model", "tiny",
                               "--setting", "cross-dataset", "--dataset", dataset, "--out", str(out)],
        "detect mutual": ["detect", str(_cloud(mvtec_dataset)), "--method", "mutual-scoring", "--reference", store,
                          "--class", "cookie", "--model", "tiny", "--out", str(out)],
    }[command]
    result = CliRunner().invoke(pointad, args)
    assert result.exit_code != 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("Error: ") and store in last, result.output
    assert "renderings are 48 px, model 'tiny' takes 336 px" in last, last
    assert "Traceback" not in result.output
    assert not out.exists()
