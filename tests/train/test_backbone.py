"""FrozenCLIP on the tiny config: DPAM against a brute-force loop, open_clip agreement, freezing, configs."""

from __future__ import annotations

import json

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F

from pointad.shared.errors import ConfigError
from pointad.train.model.backbone import CLIP_MEAN, CLIP_STD, FrozenCLIP, create_clip, expected_shapes, normalize
from pointad.train.model.model_config import ModelConfig, known_model_configs, load_model_config

TOL = 1e-5


def assert_close(actual, expected, tol=TOL, what="values"):
    """Fail with the largest absolute difference and where it is."""
    diff = (actual.double() - expected.double()).abs()
    worst = diff.max().item()
    where = tuple(int(i) for i in np.unravel_index(int(diff.argmax()), diff.shape))
    assert worst <= tol, f"{what}: max |difference| {worst:.3g} at {where} (tolerance {tol})"


@pytest.fixture(scope="module")
def tiny():
    return load_model_config("tiny")


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 336, 336, generator=torch.Generator().manual_seed(7))


def build(config, seed=0):
    return FrozenCLIP.from_config(config, seed=seed)


# ---- brute-force DPAM, written from design §5 without the backbone's code ------------------------------

def _layer_norm(x, module):
    return F.layer_norm(x, (x.shape[-1],), module.weight, module.bias, module.eps)


def _heads_attention(q, k, v, heads):
    """Per head softmax(q k^T / sqrt(d)) v, explicit loop over heads; q, k, v: (N, W) for one image."""
    width = q.shape[-1]
    d = width // heads
    outs = []
    for head in range(heads):
        sl = slice(head * d, (head + 1) * d)
        weights = torch.softmax(q[:, sl] @ k[:, sl].T * d ** -0.5, dim=-1)
        outs.append(weights @ v[:, sl])
    return torch.cat(outs, dim=-1)


def _brute_force(model, image, dual_from, taps):
    """(global (D,), {tap layer: (G*G, D)}) for one image (3, S, S); dual_from and taps 1-based."""
    visual = model.visual
    patches = F.conv2d(image[None], visual.conv1.weight, stride=visual.conv1.stride)[0]  # (W, G, G)
    tokens = patches.reshape(patches.shape[0], -1).T
    x = torch.cat([visual.class_embedding[None], tokens]) + visual.positional_embedding
    h = _layer_norm(x, visual.ln_pre)
    s = None
    out = {}
    for number, block in enumerate(visual.transformer.resblocks, start=1):
        attn = block.attn
        heads = attn.num_heads
        width = h.shape[-1]
        y = _layer_norm(h, block.ln_1)
        wq, wk, wv = attn.in_proj_weight[:width], attn.in_proj_weight[width:2 * width], attn.in_proj_weight[2 * width:]
        bq, bk, bv = attn.in_proj_bias[:width], attn.in_proj_bias[width:2 * width], attn.in_proj_bias[2 * width:]
        q, k, v = y @ wq.T + bq, y @ wk.T + bk, y @ wv.T + bv
        original = _heads_attention(q, k, v, heads) @ attn.out_proj.weight.T + attn.out_proj.bias
        if dual_from is not None and number >= dual_from:
            surgery = _heads_attention(v, v, v, heads) @ attn.out_proj.weight.T + attn.out_proj.bias
            s = (h if s is None else s) + surgery
        h = h + original
        z = _layer_norm(h, block.ln_2) @ block.mlp.c_fc.weight.T + block.mlp.c_fc.bias
        z = z * torch.sigmoid(1.702 * z)  # QuickGELU
        h = h + z @ block.mlp.c_proj.weight.T + block.mlp.c_proj.bias
        if number in taps:
            state = h if s is None else s
            out[number] = F.normalize(_layer_norm(state[1:], visual.ln_post) @ visual.proj, dim=-1)
    g = F.normalize(_layer_norm(h[0], visual.ln_post) @ visual.proj, dim=-1)
    return g, out


@pytest.mark.parametrize("dual", [(2, 3, 4), (4,), ()], ids=["dual-2..4", "dual-4", "no-dual"])
def test_dpam_matches_brute_force_loop(tiny, images, dual):
    config = tiny.with_dual_path(dual).with_taps((1, 2, 3, 4))
    backbone = build(config)
    features = backbone.encode_image(images)
    assert features.patch_tokens.shape == (4, 2, 576, 32)
    with torch.no_grad():
        for b in range(images.shape[0]):
            g, taps = _brute_force(backbone.clip, images[b], dual[0] if dual else None, config.tap_layers)
            assert_close(features.global_feature[b], g, what=f"global feature, image {b}")
            for i, layer in enumerate(config.tap_layers):
                assert_close(features.patch_tokens[i, b], taps[layer], what=f"layer {layer} tokens, image {b}")


@pytest.mark.parametrize("depth", [0, 1, 2, 3, 4])
def test_global_feature_equals_open_clip_for_every_dual_path_depth(tiny, images, depth):
    backbone = build(tiny.with_dual_path(range(5 - depth, 5)))
    with torch.no_grad():
        reference = backbone.clip.encode_image(images, normalize=True)
    assert_close(backbone.encode_image(images).global_feature, reference, what=f"DPAM depth {depth}")


def test_without_dual_path_the_taps_are_open_clip_intermediates(tiny, images):
    backbone = build(tiny.with_dual_path(()).with_taps((1, 3, 4)))
    visual = backbone.clip.visual
    with torch.no_grad():
        out = visual.forward_intermediates(images, indices=[0, 2, 3], normalize_intermediates=True,
                                           intermediates_only=True, output_fmt="NLC")
        reference = torch.stack([F.normalize(t @ visual.proj, dim=-1) for t in out["image_intermediates"]])
    assert_close(backbone.encode_image(images).patch_tokens, reference, what="no-DPAM taps")


def test_surgery_path_differs_from_original_path(tiny, images):
    with_dual = build(tiny).encode_image(images).patch_tokens
    without = build(tiny.with_dual_path(())).encode_image(images).patch_tokens
    assert (with_dual - without).abs().max() > 1e-2


def test_bf16_autocast_runs_and_stays_close(tiny, images):
    backbone = build(tiny)
    exact = backbone.encode_image(images)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast = backbone.encode_image(images)
    cosine = (fast.patch_tokens.float() * exact.patch_tokens).sum(-1)
    assert cosine.min() > 0.98, f"bf16 patch tokens drift: min cosine {cosine.min():.4f}"
    assert (fast.global_feature.float() * exact.global_feature).sum(-1).min() > 0.98


def test_every_clip_parameter_is_frozen_and_eval(tiny):
    backbone = build(tiny)
    backbone.train()
    assert not backbone.clip.training and not backbone.clip.visual.training
    frozen = [name for name, p in backbone.named_parameters() if p.requires_grad]
    assert frozen == [], f"trainable CLIP parameters: {frozen[:3]}"
    assert sum(p.numel() for p in backbone.parameters()) > 0


def test_same_seed_same_weights_other_seed_other(tiny):
    a, b, c = create_clip(tiny, seed=1), create_clip(tiny, seed=1), create_clip(tiny, seed=2)
    assert torch.equal(a.visual.proj, b.visual.proj)
    assert not torch.equal(a.visual.proj, c.visual.proj)


def test_text_of_plain_sentences_equals_open_clip(tiny):
    backbone = build(tiny)
    sentences = ["a photo of a damaged cookie.", "object", "a much longer sentence about a scratched torus."]
    with torch.no_grad():
        reference = backbone.clip.encode_text(backbone.tokenize(sentences), normalize=True)
    assert_close(backbone.encode_text(sentences), reference, what="text features")


def test_deep_prompts_equal_to_the_hidden_states_change_nothing(tiny):
    backbone = build(tiny)
    clip = backbone.clip
    ids = backbone.tokenize(["a photo of a small damaged object."])
    emb = backbone.token_embedding(ids)
    with torch.no_grad():
        x = emb + clip.positional_embedding
        _, hidden = clip.transformer.forward_intermediates(x, attn_mask=clip.attn_mask, indices=[0, 1, 2])
        reference = clip.encode_text(ids, normalize=True)
        deep = [state[0, 1:5] for state in hidden]  # input of layers 2, 3, 4
        assert_close(backbone.encode_text_embeddings(emb, ids.argmax(-1), deep), reference, what="deep = hidden")
        for layer in range(3):
            other = list(deep)
            # a random change, not a constant shift: every LayerNorm would remove a shift
            noise = torch.randn(other[layer].shape, generator=torch.Generator().manual_seed(layer))
            other[layer] = other[layer] + noise
            changed = backbone.encode_text_embeddings(emb, ids.argmax(-1), other)
            assert (changed - reference).abs().max() > 1e-3, f"deep prompt of layer {layer + 2} had no effect"


def test_too_many_deep_prompt_layers_is_an_error(tiny):
    backbone = build(tiny)
    ids = backbone.tokenize(["object."])
    with pytest.raises(ValueError, match="at most 3"):
        backbone.encode_text_embeddings(backbone.token_embedding(ids), ids.argmax(-1), [torch.zeros(4, 64)] * 4)


def test_normalize_matches_the_formula_on_three_pixels():
    pixels = torch.tensor([[[[0, 128, 255]]]], dtype=torch.uint8)  # (1, 1, 1, 3)
    out = normalize(pixels)
    expected = [(0 / 255 - CLIP_MEAN[0]) / CLIP_STD[0], (128 / 255 - CLIP_MEAN[1]) / CLIP_STD[1],
                (255 / 255 - CLIP_MEAN[2]) / CLIP_STD[2]]
    assert out.shape == (1, 3, 1, 1)
    assert_close(out.flatten(), torch.tensor(expected), tol=1e-6, what="normalised pixels")
    assert_close(normalize(pixels.float() / 255), out, tol=1e-6, what="float input")
    with pytest.raises(ValueError, match="B, S, S, 3"):
        normalize(torch.zeros(1, 3, 4, 4))


def test_image_of_wrong_size_is_an_error(tiny):
    with pytest.raises(ValueError, match="336"):
        build(tiny).encode_image(torch.zeros(1, 3, 224, 224))


# ---- configs --------------------------------------------------------------------------------------

def test_tiny_is_labelled_random_and_is_the_clip_family(tiny):
    assert tiny.label == "tiny (random weights)"
    assert tiny.random_init and tiny.pretrained is None and tiny.quick_gelu
    backbone = build(tiny)
    assert backbone.label == "tiny (random weights)"
    assert backbone.grid_size == 24 and backbone.vision_layers == 4 and backbone.text_layers == 4
    assert backbone.context_length == 77 and backbone.embed_dim == 32
    assert isinstance(backbone.clip.visual.transformer.resblocks[0].mlp.gelu, open_clip.transformer.QuickGELU)
    assert "pointad-tiny" in open_clip.list_models()  # registered: open_clip's own factory can build it


def test_vit_l_config_uses_quickgelu_openai_weights_and_spec_blocks():
    config = load_model_config("ViT-L-14-336")
    assert config.name == "vit-l-14-336" and config.label == "ViT-L-14-336 (OpenAI weights)"
    assert config.open_clip_name == "ViT-L-14-336-quickgelu" and config.pretrained == "openai"
    assert config.dual_path_blocks == tuple(range(6, 25)) and config.tap_layers == (6, 12, 18, 24)
    assert config.dual_path_start == 5 and config.tap_indices == (5, 11, 17, 23)


@pytest.mark.slow
def test_vit_l_shapes_on_the_meta_device():
    config = load_model_config("vit-l-14-336")
    backbone = FrozenCLIP(config, create_clip(config, device="meta"))
    features = backbone.encode_image(torch.empty(3, 3, 336, 336, device="meta"))
    assert features.global_feature.shape == (3, 768)
    assert features.patch_tokens.shape == (4, 3, 576, 768)
    assert backbone.text_width == 768 and backbone.text_layers == 12
    shapes, rebuilt = expected_shapes(config)
    assert shapes["visual.conv1.weight"] == (1024, 3, 14, 14) and rebuilt == {"attn_mask"}


def test_plain_gelu_architecture_is_refused_for_openai_weights():
    data = load_model_config("vit-l-14-336").to_dict()
    data.update(open_clip_name="ViT-L-14-336", quick_gelu=False)
    with pytest.raises(ConfigError, match="quick_gelu"):
        create_clip(ModelConfig.from_dict(data), device="meta")


def test_unknown_model_name_lists_the_known_ones():
    assert known_model_configs() == ["tiny", "vit-l-14-336"]
    with pytest.raises(ConfigError, match="unknown model 'vit-b'; known: tiny, vit-l-14-336"):
        load_model_config("vit-b")


def test_unknown_key_is_named(tiny):
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['dpam'\]"):
        ModelConfig.from_dict({**tiny.to_dict(), "dpam": 20})


def test_config_round_trips_through_json(tiny):
    for config in (tiny, load_model_config("vit-l-14-336")):
        assert ModelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.parametrize("change, message", [
    ({"dual_path_blocks": [2, 4]}, "one consecutive run"),
    ({"tap_layers": [3, 2]}, "increasing"),
    ({"tap_layers": [0]}, "1-based"),
    ({"image_size": "336"}, "'image_size' must be int"),
    ({"random_init": False}, "exactly one of"),
])
def test_bad_config_values_are_named(tiny, change, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig.from_dict({**tiny.to_dict(), **change})


@pytest.mark.parametrize("change, message", [
    ({"dual_path_blocks": [2, 3]}, "must end at the last block"),
    ({"tap_layers": [2, 5]}, "beyond the 4 blocks"),
])
def test_blocks_outside_the_model_are_refused(tiny, change, message):
    with pytest.raises(ConfigError, match=message):
        build(ModelConfig.from_dict({**tiny.to_dict(), **change}))
