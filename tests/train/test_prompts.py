"""PromptLearner on the tiny backbone: agreement with open_clip's text encoder, gradients, checkpoints."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from pointad.shared.errors import CheckpointMismatchError, ConfigError
from pointad.train.model.backbone import FrozenCLIP
from pointad.train.model.model_config import load_model_config
from pointad.train.model.prompts import PromptLearner

E = 12


def assert_close(actual, expected, tol=1e-5, what="values"):
    diff = (actual.double() - expected.double()).abs()
    where = tuple(int(i) for i in np.unravel_index(int(diff.argmax()), diff.shape))
    assert diff.max().item() <= tol, f"{what}: max |difference| {diff.max().item():.3g} at {where}"


@pytest.fixture(scope="module")
def backbone():
    return FrozenCLIP.from_config(load_model_config("tiny"), seed=3)


def _word_ids(backbone, sentence, count):
    """The first `count` BPE ids of `sentence` (no start/end tokens)."""
    ids = backbone.tokenize([sentence])[0]
    words = ids[1:ids.argmax()]
    assert len(words) >= count, f"'{sentence}' has only {len(words)} tokens"
    return words[:count]


def _open_clip_features(backbone, word_ids, tail):
    """open_clip's own encode_text of [SOT] words tail [EOT], normalised (D,)."""
    tail_ids = backbone.tokenize([tail])[0]
    tail_ids = tail_ids[1:tail_ids.argmax() + 1]  # tail words and the end token
    ids = torch.zeros(1, backbone.context_length, dtype=torch.long)
    sequence = torch.cat([torch.tensor([backbone.sot_token_id]), word_ids, tail_ids])
    ids[0, :len(sequence)] = sequence
    with torch.no_grad():
        return backbone.clip.encode_text(ids, normalize=True)[0]


NORMAL_WORDS = "a photo of a perfectly clean and smooth plastic part on a table"
ANOMALOUS_WORDS = "a close up photo of a scratched and dented metal part with holes"


def _learner_with_words(backbone, **kwargs):
    learner = PromptLearner.for_backbone(backbone, seed=0, **kwargs)
    with torch.no_grad():
        learner.ctx[0] = backbone.token_embedding(_word_ids(backbone, NORMAL_WORDS, E))
        learner.ctx[1] = backbone.token_embedding(_word_ids(backbone, ANOMALOUS_WORDS, E))
    return learner


def test_real_word_prompts_equal_open_clip_text_features(backbone):
    learner = _learner_with_words(backbone, depth=1)
    features = learner(backbone)
    assert features.shape == (1, 2, backbone.embed_dim)
    assert_close(features[0, 0], _open_clip_features(backbone, _word_ids(backbone, NORMAL_WORDS, E), "object."),
                 what="normal template")
    assert_close(features[0, 1], _open_clip_features(backbone, _word_ids(backbone, ANOMALOUS_WORDS, E),
                                                     "damaged object."), what="anomalous template")


def test_coop_uses_the_class_name(backbone):
    learner = _learner_with_words(backbone, variant="coop", class_names=["cookie", "potato_chip"], depth=1)
    features = learner(backbone)
    assert features.shape == (2, 2, backbone.embed_dim)
    assert_close(features[1, 1], _open_clip_features(backbone, _word_ids(backbone, ANOMALOUS_WORDS, E),
                                                     "damaged potato chip."), what="coop anomalous")
    other = learner(backbone, class_names=["tire"])
    assert other.shape == (1, 2, backbone.embed_dim)
    assert_close(other[0, 0], _open_clip_features(backbone, _word_ids(backbone, NORMAL_WORDS, E), "tire."),
                 what="coop on an unseen class")


def test_deep_prompts_default_depth_is_clamped_and_used(backbone):
    learner = _learner_with_words(backbone)  # depth 9 on a 4-layer text tower -> layers 2..4
    assert learner.depth == 4 and learner.deep.shape == (3, 4, backbone.text_width)
    shallow = _learner_with_words(backbone, depth=1)
    assert (learner(backbone) - shallow(backbone)).abs().max() > 1e-3


def test_outputs_are_unit_vectors(backbone):
    features = PromptLearner.for_backbone(backbone, seed=1)(backbone)
    assert_close(features.norm(dim=-1), torch.ones(1, 2), tol=1e-6, what="norms")


def test_initialisation_is_normal_with_std_002(backbone):
    learner = PromptLearner.for_backbone(backbone, seed=5)
    for name, values in (("ctx", learner.ctx), ("deep", learner.deep)):
        assert abs(values.std().item() - 0.02) < 0.002, f"{name} std {values.std().item():.4f}"
        assert abs(values.mean().item()) < 0.002, f"{name} mean {values.mean().item():.4f}"
        assert values.dtype == torch.float32
    assert torch.equal(learner.ctx, PromptLearner.for_backbone(backbone, seed=5).ctx)


def test_gradients_reach_the_prompts_only_and_clip_stays_unchanged(backbone):
    learner = PromptLearner.for_backbone(backbone, seed=2)
    assert {name for name, _ in learner.named_parameters()} == {"ctx", "deep"}
    before = {name: p.detach().clone() for name, p in backbone.named_parameters()}
    prompts_before = {name: p.detach().clone() for name, p in learner.named_parameters()}
    # even an optimizer handed every parameter must leave CLIP alone
    optimizer = torch.optim.Adam([*learner.parameters(), *backbone.parameters()], lr=1e-2, betas=(0.5, 0.999))
    features = learner(backbone)
    loss = -(features[0, 0] * features[0, 1]).sum()
    loss.backward()
    assert learner.ctx.grad is not None and learner.ctx.grad.abs().sum() > 0
    assert learner.deep.grad is not None and learner.deep.grad.abs().sum() > 0
    with_grad = [name for name, p in backbone.named_parameters() if p.grad is not None]
    assert with_grad == [], f"CLIP parameters got gradients: {with_grad[:3]}"
    optimizer.step()
    changed = [name for name, p in backbone.named_parameters() if not torch.equal(p, before[name])]
    assert changed == [], f"CLIP parameters changed: {changed[:3]}"
    assert all(not torch.equal(p, prompts_before[name]) for name, p in learner.named_parameters())


def _round_trip(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_checkpoint_state_round_trips(backbone):
    learner = PromptLearner.for_backbone(backbone, variant="coop", class_names=["cookie"], seed=4)
    state = _round_trip(learner.state_for_checkpoint())
    fresh = PromptLearner.for_backbone(backbone, variant="coop", class_names=["cookie"], seed=9)
    fresh.load_state(state)
    assert_close(fresh(backbone), learner(backbone), tol=0, what="reloaded prompts")
    rebuilt = PromptLearner.from_state(state)
    assert rebuilt.settings() == learner.settings()
    assert_close(rebuilt(backbone), learner(backbone), tol=0, what="prompts from state")


@pytest.mark.parametrize("kwargs, key", [
    ({"depth": 2}, "depth"),
    ({"n_ctx": 8}, "n_ctx"),
    ({"n_pos": 2}, "n_pos"),
    ({"variant": "coop", "class_names": ["cookie"]}, "variant"),
])
def test_loading_into_other_settings_names_the_difference(backbone, kwargs, key):
    state = _round_trip(PromptLearner.for_backbone(backbone, seed=4).state_for_checkpoint())
    other = PromptLearner.for_backbone(backbone, **kwargs)
    with pytest.raises(CheckpointMismatchError, match=f"run7.pt: prompts were trained with {key}="):
        other.load_state(state, source="run7.pt")


def test_other_class_names_and_width_are_mismatches(backbone):
    state = PromptLearner.for_backbone(backbone, variant="coop", class_names=["cookie"]).state_for_checkpoint()
    with pytest.raises(CheckpointMismatchError, match="class_names"):
        PromptLearner.for_backbone(backbone, variant="coop", class_names=["tire"]).load_state(state)
    with pytest.raises(CheckpointMismatchError, match="width"):
        PromptLearner(768, 12, variant="coop", class_names=["cookie"], depth=4).load_state(state)
    with pytest.raises(CheckpointMismatchError, match="not a PointAD prompt state"):
        PromptLearner.for_backbone(backbone).load_state({"ctx": torch.zeros(1)})


def test_prompts_of_another_width_refuse_the_backbone(backbone):
    with pytest.raises(CheckpointMismatchError, match="tiny \\(random weights\\)"):
        PromptLearner(768, 12)(backbone)


@pytest.mark.parametrize("kwargs, message", [
    ({"variant": "maple"}, "unknown prompt variant 'maple'"),
    ({"variant": "coop"}, "needs at least one"),
    ({"class_names": ["cookie"]}, "agnostic prompt says 'object'"),
    ({"n_pos": 13}, "n_pos 13 > n_ctx 12"),
])
def test_bad_settings_are_config_errors(backbone, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        PromptLearner.for_backbone(backbone, **kwargs)


def test_too_long_class_name_is_refused(backbone):
    learner = PromptLearner.for_backbone(backbone, variant="coop", class_names=["very " * 70 + "long"])
    with pytest.raises(ConfigError, match="too long"):
        learner(backbone)
