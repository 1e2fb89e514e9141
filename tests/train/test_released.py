"""`train import-released`: a checkpoint in the authors' released layout becomes a run that scores exactly
as our PromptLearner holding the same numbers.

The released layout, as read from zqhang/PointAD's prompt learner and its training script's
`torch.save({"prompt_learner": prompt_learner.state_dict()}, .../epoch_N.pth)` (written down here, never
copied from their files), for E = n_ctx learned words, D = depth, n_pos = t_n_ctx, width W, context L:
  ctx_pos, ctx_neg (1, 1, E, W); compound_prompts_text.<j> (n_pos, W) for j < D - 1;
  compound_prompt_projections.<j>.weight (896, W), .bias (896,); token_prefix_pos/neg (1, 1, 1, W);
  token_suffix_pos/neg (1, 1, L - 1 - E, W); tokenized_prompts_pos/neg (1, 1, L) int32 ids of
  "X X .. X object." / "X X .. X damaged object.".
The released checkpoints are for ViT-L (W = 768, E = 12, D = 9, n_pos = 4); these tests build them at the
tiny model's widths (W = 64, 4 text layers: D = 4) so they run on CPU in seconds.
"""

from __future__ import annotations

import json
import pickle

import numpy as np
import open_clip
import pytest
import torch
from click.testing import CliRunner

from pointad.eval.runs import BackboneCache, load_run, prompt_features
from pointad.eval.scoring import score_store_runs
from pointad.shared.cli import pointad
from pointad.train.model.backbone import load_backbone
from pointad.train.model.model_config import load_model_config
from pointad.train.model.prompts import PromptLearner

WIDTH, LENGTH, N_CTX, DEPTH, N_POS = 64, 77, 12, 4, 4   # tiny's text width and context; D <= its 4 layers
MVTEC = "synthetic-mvtec3d"


def released_state(seed: int = 0, n_ctx: int = N_CTX, depth: int = DEPTH, n_pos: int = N_POS,
                   width: int = WIDTH) -> dict:
    """A prompt learner state dict in the released layout (module docstring), random values."""
    g = torch.Generator().manual_seed(seed)
    state = {"ctx_pos": torch.randn(1, 1, n_ctx, width, generator=g) * 0.02,
             "ctx_neg": torch.randn(1, 1, n_ctx, width, generator=g) * 0.02}
    for j in range(depth - 1):
        state[f"compound_prompts_text.{j}"] = torch.randn(n_pos, width, generator=g) * 0.02
    for j in range(depth - 1):
        state[f"compound_prompt_projections.{j}.weight"] = torch.randn(896, width, generator=g)
        state[f"compound_prompt_projections.{j}.bias"] = torch.randn(896, generator=g)
    for side, state_word in (("pos", ""), ("neg", "damaged ")):
        state[f"token_prefix_{side}"] = torch.randn(1, 1, 1, width, generator=g)
        state[f"token_suffix_{side}"] = torch.randn(1, 1, LENGTH - 1 - n_ctx, width, generator=g)
        text = " ".join(["X"] * n_ctx) + f" {state_word}object."
        state[f"tokenized_prompts_{side}"] = open_clip.tokenize([text]).int().reshape(1, 1, LENGTH)
    return state


def _save(path, payload):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)
    return path


def _import(*args):
    return CliRunner().invoke(pointad, ["train", "import-released", *map(str, args)])


def _direct_learner(state: dict, round_deep: bool = True) -> PromptLearner:
    """Our PromptLearner holding the released numbers, set by hand (ctx_pos -> normal, ctx_neg -> anomalous)."""
    learner = PromptLearner(WIDTH, 4, n_ctx=N_CTX, depth=DEPTH, n_pos=N_POS)
    deep = torch.stack([state[f"compound_prompts_text.{j}"] for j in range(DEPTH - 1)])
    with torch.no_grad():
        learner.ctx.copy_(torch.stack([state["ctx_pos"][0, 0], state["ctx_neg"][0, 0]]))
        learner.deep.copy_(deep.half().float() if round_deep else deep)
    return learner


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """(state, run directory) of a released-layout checkpoint imported for the tiny model."""
    folder = tmp_path_factory.mktemp("released")
    state = released_state(1)
    source = _save(folder / "prompt_checkpoint.pth", {"prompt_learner": state})
    result = _import(source, "--out", folder / "runs" / "released", "--class", "cookie", "--dataset", MVTEC,
                     "--model", "tiny")
    assert result.exit_code == 0, result.output
    return state, folder / "runs" / "released"


@pytest.mark.slow
def test_imported_run_scores_exactly_as_the_same_numbers_set_directly(imported, eval_store):
    state, run_dir = imported
    run = load_run(run_dir, BackboneCache())
    assert run.train["class_name"] == "cookie" and run.train["dataset"] == MVTEC
    backbone = load_backbone(load_model_config("tiny"), seed=run.train["seed"])
    direct = prompt_features(_direct_learner(state), backbone)
    assert torch.equal(run.text, direct)
    unrounded = prompt_features(_direct_learner(state, round_deep=False), backbone)
    assert not torch.equal(run.text, unrounded), "the float16 rounding of the deep prompts was not applied"
    rows = [0, 1]
    for per_row in score_store_runs(eval_store, rows, run.backbone, [run.text, direct]):
        ours, theirs = per_row
        assert ours.score == theirs.score
        np.testing.assert_array_equal(ours.point_scores, theirs.point_scores)


def test_deep_prompts_are_stored_as_their_float16_roundings(imported):
    state, run_dir = imported
    payload = torch.load(next((run_dir / "checkpoints").glob("epoch_*.pt")), weights_only=True)
    deep = torch.stack([state[f"compound_prompts_text.{j}"] for j in range(DEPTH - 1)])
    assert torch.equal(payload["prompts"]["deep"], deep.half().float())
    assert not torch.equal(payload["prompts"]["deep"], deep)
    assert torch.equal(payload["prompts"]["ctx"][0], state["ctx_pos"][0, 0])   # the words are kept as stored
    assert torch.equal(payload["prompts"]["ctx"][1], state["ctx_neg"][0, 0])
    config = json.loads((run_dir / "config.json").read_text())
    assert config["train"]["class_name"] == "cookie" and config["imported"]["file"].endswith("prompt_checkpoint.pth")
    assert set(config["imported"]["dropped"]) == {k for k in state if not k.startswith(("ctx_", "compound_prompts_text"))}


@pytest.mark.slow
def test_eval_report_takes_the_imported_run_like_any_run(imported, eval_store):
    _, run_dir = imported
    result = CliRunner().invoke(pointad, [
        "eval", "report", "--store", str(eval_store), "--checkpoints", str(run_dir), "--dataset", MVTEC,
        "--report-format", "json", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["header"]["training_classes"] == ["cookie"] and report["header"]["model"].startswith("tiny")
    assert {row["class"] for row in report["rows"]} == {"torus", "mean"}   # one-vs-rest: cookie left out


def test_class_dataset_epoch_and_layers_come_from_the_released_path(tmp_path):
    source = _save(tmp_path / f"exps_{DEPTH}_{N_CTX}_{N_POS}_mv9_mvtec_3d_336_4" / "carrot" / "epoch_7.pth",
                   {"prompt_learner": released_state(2)})
    result = _import(source, "--out", tmp_path / "run", "--model", "tiny", "--layers", "2,3,4")
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "run" / "config.json").read_text())["train"]
    assert (config["class_name"], config["dataset"], config["epochs"], config["layers"]) == ("carrot", "mvtec3d", 7,
                                                                                          [2, 3, 4])
    assert (tmp_path / "run" / "checkpoints" / "epoch_7.pt").is_file()


# the --features_list each released script passes, by the <data> of its folder name (zqhang/PointAD's
# train/test shell scripts, written down here by hand): MVTec 3D-AD and Eyecandies tap layer 24 only
RELEASED_TAPS = {"mvtec_3d": [24], "eye_3d": [24], "real_3d": [6, 12, 18, 24]}


@pytest.mark.parametrize("data, dataset", [("mvtec_3d", "mvtec3d"), ("eye_3d", "eyecandies"), ("real_3d", "real3d")])
def test_without_layers_the_run_taps_the_layers_its_folder_name_implies(tmp_path, data, dataset):
    """ViT-L at the released sizes (W 768, 12 words, depth 9, 4 deep positions; no weights are loaded):
    the run taps what the released script for that data tapped, which for MVTec 3D-AD and Eyecandies is not
    the model's default (6, 12, 18, 24)."""
    state = released_state(5, n_ctx=12, depth=9, n_pos=4, width=768)
    state = {k: v for k, v in state.items() if not k.startswith(("compound_prompt_projections", "token_"))}
    source = _save(tmp_path / f"exps_9_12_4_mv9_{data}_336_4" / "carrot" / "epoch_3.pth", {"prompt_learner": state})
    result = _import(source, "--out", tmp_path / "run", "--model", "vit-l-14-336")
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (config["train"]["dataset"], config["train"]["layers"]) == (dataset, RELEASED_TAPS[data])
    assert config["model"]["tap_layers"] == RELEASED_TAPS[data]
    payload = torch.load(tmp_path / "run" / "checkpoints" / "epoch_3.pt", weights_only=True)
    assert payload["model"]["tap_layers"] == RELEASED_TAPS[data] and payload["config"]["layers"] == RELEASED_TAPS[data]
    given = _import(source, "--out", tmp_path / "given", "--model", "vit-l-14-336", "--layers", "12,24")
    assert given.exit_code == 0, given.output
    assert json.loads((tmp_path / "given" / "config.json").read_text())["model"]["tap_layers"] == [12, 24]


def test_a_folder_name_that_disagrees_with_the_tensors_is_refused(tmp_path):
    source = _save(tmp_path / "exps_9_12_4_mv9_mvtec_3d_336_4" / "carrot" / "epoch_1.pth",
                   {"prompt_learner": released_state(2)})
    result = _import(source, "--out", tmp_path / "run", "--model", "tiny", "--layers", "2,3,4")
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [f"Error: {source}: its folder says depth 9, n_ctx 12, t_n_ctx 4; "
                                                  f"its tensors hold depth {DEPTH}, n_ctx 12, t_n_ctx 4"]
    assert not (tmp_path / "run").exists()


class _Shell:
    def __reduce__(self):
        import os
        return os.system, ("echo ran",)


def _hostile_cases():
    ours = {"format": "pointad-prompts", "version": 1, "prompts": {}}
    missing = released_state(3)
    del missing["ctx_neg"]
    wrong = released_state(3) | {"compound_prompts_text.1": torch.zeros(5, WIDTH)}
    extra = released_state(3) | {"visual_adapter.weight": torch.zeros(2, 2)}
    other_template = released_state(3)
    other_template["tokenized_prompts_neg"] = open_clip.tokenize(
        [" ".join(["X"] * N_CTX) + " broken cookie."]).int().reshape(1, 1, LENGTH)
    return {
        "not_released": ({"state_dict": released_state(3)}, "not a released PointAD prompt checkpoint (expected "
                                                              "{'prompt_learner': state dict}, got ['state_dict'])"),
        "ours": (ours, "already a checkpoint of this toolkit; use it (or its run directory) directly"),
        "missing": ({"prompt_learner": missing}, "not a released PointAD prompt checkpoint ('ctx_neg' is missing)"),
        "wrong_shape": ({"prompt_learner": wrong}, "'compound_prompts_text.1' is (5, 64) torch.float32, a released "
                                                    "checkpoint has (4, 64) float"),
        "extra_key": ({"prompt_learner": extra}, "not a released PointAD prompt checkpoint (unexpected "
                                                  "visual_adapter.weight)"),
        "template": ({"prompt_learner": other_template}, 'its prompts are not the agnostic "[words] damaged object." '
                                                         "template this import reads"),
    }


@pytest.mark.parametrize("case", list(_hostile_cases()))
def test_anything_but_a_released_checkpoint_is_refused_in_one_line(case, tmp_path):
    payload, reason = _hostile_cases()[case]
    source = _save(tmp_path / "in.pth", payload)
    result = _import(source, "--out", tmp_path / "run", "--class", "cookie", "--dataset", MVTEC, "--model", "tiny")
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [f"Error: {source}: {reason}"]
    assert not (tmp_path / "run").exists()


def test_a_file_that_would_run_code_is_refused_without_running_it(tmp_path, capfd):
    source = tmp_path / "evil.pth"
    source.write_bytes(pickle.dumps({"prompt_learner": _Shell()}))
    result = _import(source, "--out", tmp_path / "run", "--class", "cookie", "--dataset", MVTEC, "--model", "tiny")
    assert result.exit_code == 1
    line, = result.output.strip().splitlines()
    assert line.startswith(f"Error: {source}: not a readable released PointAD checkpoint") and "weights_only" not in line
    assert "ran" not in capfd.readouterr().out and not (tmp_path / "run").exists()


def test_an_existing_run_folder_is_never_overwritten(imported, tmp_path):
    state, run_dir = imported
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    source = _save(tmp_path / "x.pth", {"prompt_learner": released_state(4)})
    result = _import(source, "--out", run_dir, "--class", "cookie", "--dataset", MVTEC, "--model", "tiny")
    assert result.exit_code == 1 and "already exists" in result.output
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


def test_without_class_and_dataset_a_plain_path_asks_for_them(tmp_path):
    source = _save(tmp_path / "x.pth", {"prompt_learner": released_state(4)})
    result = _import(source, "--out", tmp_path / "run", "--model", "tiny")
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [f"Error: {source}: the path does not say the training class "
                                                  "(exps_*/<class>/epoch_N.pth); give --class and --dataset"]
