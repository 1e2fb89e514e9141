"""Locating and checking CLIP weight files: never a download, always a one-line error naming the file."""

from __future__ import annotations

import os
import warnings

import pytest
import torch
from safetensors.torch import save_file

from pointad.shared.errors import CheckpointMismatchError, ConfigError, WeightsNotFoundError
from pointad.train.model.backbone import FrozenCLIP, create_clip, load_backbone
from pointad.train.model.model_config import ModelConfig, load_model_config
from pointad.train.model.weights import WEIGHT_NAMES, check_state_dict, locate_weights, read_state_dict

HUB_REPO_DIR = "models--timm--vit_large_patch14_clip_336.openai"


@pytest.fixture(scope="module")
def vit_l():
    return load_model_config("vit-l-14-336")


@pytest.fixture(scope="module")
def tiny_with_file():
    """The tiny architecture as a config that needs a weights file (the path a real model takes)."""
    data = load_model_config("tiny").to_dict()
    data.update(name="tiny-file", label="tiny (weights from a file)", random_init=False, pretrained="file")
    return ModelConfig.from_dict(data)


@pytest.fixture
def empty_caches(tmp_path):
    caches = {name: tmp_path / name for name in ("pointad", "hf", "openai")}
    for folder in caches.values():
        folder.mkdir()
    return dict(pointad_cache=caches["pointad"], hf_cache=caches["hf"], openai_cache=caches["openai"])


def _tiny_state(seed=5):
    return create_clip(load_model_config("tiny"), seed=seed).state_dict()


def _one_line(exc_info):
    message = str(exc_info.value)
    assert "\n" not in message, f"multi-line message: {message!r}"
    return message


# ---- locating ---------------------------------------------------------------------------------------

def test_missing_everywhere_says_which_file_to_place_where(vit_l, empty_caches):
    with pytest.raises(WeightsNotFoundError) as info:
        locate_weights(vit_l, **empty_caches)
    message = _one_line(info)
    expected = empty_caches["pointad_cache"] / "clip" / "vit-l-14-336" / "open_clip_model.safetensors"
    assert f"at {expected}" in message
    assert "https://huggingface.co/timm/vit_large_patch14_clip_336.openai" in message
    assert "--clip-weights" in message
    assert str(empty_caches["hf_cache"] / HUB_REPO_DIR) in message
    assert str(empty_caches["openai_cache"] / "ViT-L-14-336px.pt") in message


def test_missing_explicit_file_is_named(vit_l, tmp_path):
    missing = tmp_path / "nowhere" / "clip.safetensors"
    with pytest.raises(WeightsNotFoundError, match=f"{missing}: CLIP weights file not found"):
        locate_weights(vit_l, missing)


def test_folder_without_weights_is_named(vit_l, tmp_path):
    with pytest.raises(WeightsNotFoundError, match=f"{tmp_path}: no open_clip_model.safetensors"):
        locate_weights(vit_l, tmp_path)


def test_found_in_each_cache_in_order(vit_l, empty_caches, tmp_path):
    legacy = empty_caches["openai_cache"] / "ViT-L-14-336px.pt"
    legacy.write_bytes(b"x")
    assert locate_weights(vit_l, **empty_caches) == legacy
    snapshot = empty_caches["hf_cache"] / HUB_REPO_DIR / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "open_clip_pytorch_model.bin").write_bytes(b"x")
    (empty_caches["hf_cache"] / HUB_REPO_DIR / "refs").mkdir()
    (empty_caches["hf_cache"] / HUB_REPO_DIR / "refs" / "main").write_text("abc123")
    assert locate_weights(vit_l, **empty_caches) == snapshot / "open_clip_pytorch_model.bin"
    ours = empty_caches["pointad_cache"] / "clip" / "vit-l-14-336"
    ours.mkdir(parents=True)
    (ours / WEIGHT_NAMES[1]).write_bytes(b"x")
    assert locate_weights(vit_l, **empty_caches) == ours / WEIGHT_NAMES[1]
    explicit = tmp_path / "mine.bin"
    explicit.write_bytes(b"x")
    assert locate_weights(vit_l, explicit, **empty_caches) == explicit
    assert locate_weights(vit_l, ours, **empty_caches) == ours / WEIGHT_NAMES[1]


def test_random_init_needs_no_file_and_refuses_one(tmp_path):
    tiny = load_model_config("tiny")
    assert locate_weights(tiny) is None
    with pytest.raises(ConfigError, match="tiny \\(random weights\\); --clip-weights does not apply"):
        locate_weights(tiny, tmp_path / "w.bin")


def test_load_backbone_fails_before_building_when_weights_are_missing(vit_l, tmp_path):
    with pytest.raises(WeightsNotFoundError, match="not found"):
        load_backbone(vit_l, tmp_path / "absent.safetensors")


# ---- reading and checking ---------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["safetensors", "bin", "wrapped", pytest.param("torchscript", marks=pytest.mark.slow)])
def test_a_good_file_loads_into_the_same_model(tiny_with_file, tmp_path, fmt):
    state = _tiny_state()
    path = tmp_path / f"weights.{fmt}"
    if fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    elif fmt == "bin":
        torch.save(state, path)
    elif fmt == "wrapped":  # {"state_dict": {"module.<name>": ...}} as a DataParallel training run saves it
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, path)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.save(torch.jit.script(create_clip(load_model_config("tiny"), seed=5)), str(path))
    loaded = FrozenCLIP.from_config(tiny_with_file, path)
    reference = FrozenCLIP.from_config(load_model_config("tiny"), seed=5)
    assert loaded.weights_path == path and loaded.label == "tiny (weights from a file)"
    for name, value in reference.clip.state_dict().items():
        assert torch.equal(loaded.clip.state_dict()[name], value), name
    assert all(not p.requires_grad for p in loaded.parameters())


@pytest.mark.parametrize("damage", ["truncated", "random bytes", "empty"])
def test_damaged_files_are_named_in_one_line(tiny_with_file, tmp_path, damage):
    good = tmp_path / "good.bin"
    torch.save(_tiny_state(), good)
    path = tmp_path / "weights.bin"
    if damage == "truncated":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif damage == "random bytes":
        path.write_bytes(os.urandom(4096))
    else:
        path.write_bytes(b"")
    with pytest.raises(CheckpointMismatchError) as info:
        FrozenCLIP.from_config(tiny_with_file, path)
    message = _one_line(info)
    assert message.startswith(f"{path}: cannot read CLIP weights: "), message
    assert "weights_only" not in message, message


def test_directory_given_as_weights_file_says_so(tmp_path):
    with pytest.raises(CheckpointMismatchError, match=f"^{tmp_path}: is a directory, not a CLIP weights file$"):
        read_state_dict(tmp_path)


def test_truncated_safetensors_is_named(tiny_with_file, tmp_path):
    good = tmp_path / "good.safetensors"
    save_file({k: v.contiguous() for k, v in _tiny_state().items()}, str(good))
    path = tmp_path / "cut.safetensors"
    path.write_bytes(good.read_bytes()[:-1000])
    with pytest.raises(CheckpointMismatchError, match=f"{path}: cannot read CLIP weights"):
        read_state_dict(path)


class _Payload:
    """Unpickling this calls a function: what torch.load(weights_only=True) must refuse."""

    def __reduce__(self):
        return (os.getcwd, ())


def test_pickled_objects_are_refused_without_running_them(tmp_path):
    path = tmp_path / "evil.bin"
    torch.save({"visual.proj": torch.zeros(2), "hook": _Payload()}, path)
    with pytest.raises(CheckpointMismatchError) as info:
        read_state_dict(path)
    assert _one_line(info) == (f"{path}: cannot read CLIP weights: it refers to posix.getcwd, which loading would "
                               "run; a data-only file holds tensors and plain values")  # never torch's advice
    path2 = tmp_path / "list.bin"
    torch.save([torch.zeros(2)], path2)
    with pytest.raises(CheckpointMismatchError, match=f"{path2}: holds list"):
        read_state_dict(path2)


def test_weights_of_another_architecture_are_refused_before_building(vit_l, tmp_path):
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in _tiny_state().items()}, str(path))
    with pytest.raises(CheckpointMismatchError) as info:
        load_backbone(vit_l, path)
    message = _one_line(info)
    assert message.startswith(f"{path}: not the weights of ViT-L-14-336 (OpenAI weights): ")
    assert "of other shape (ln_final.bias is (64,), expected (768,))" in message


def test_missing_and_unexpected_tensors_are_counted(tiny_with_file, tmp_path):
    state = _tiny_state()
    del state["visual.proj"]
    state["visual.extra"] = torch.zeros(3)
    path = tmp_path / "edited.bin"
    torch.save(state, path)
    with pytest.raises(CheckpointMismatchError, match=r"1 of \d+ tensors missing \(visual.proj\); "
                                                      r"1 unexpected \(visual.extra\)"):
        FrozenCLIP.from_config(tiny_with_file, path)


def test_non_finite_weights_are_refused(tiny_with_file, tmp_path):
    state = _tiny_state()
    state["visual.proj"][0, 0] = float("nan")
    path = tmp_path / "nan.bin"
    torch.save(state, path)
    with pytest.raises(CheckpointMismatchError, match=f"{path}: visual.proj holds NaN"):
        FrozenCLIP.from_config(tiny_with_file, path)


def test_check_state_dict_accepts_exact_match():
    state = {"a": torch.zeros(2, 3), "b": torch.ones(())}
    check_state_dict(state, {"a": torch.Size([2, 3]), "b": torch.Size([])}, "w.bin", "toy")
    with pytest.raises(CheckpointMismatchError, match="w.bin: not the weights of toy: 1 of other shape"):
        check_state_dict(state, {"a": torch.Size([3, 2]), "b": torch.Size([])}, "w.bin", "toy")


@pytest.mark.skipif(os.environ.get("POINTAD_SLOW_TESTS") != "1",
                    reason="builds ViT-L-14-336 twice (about 7 GB RAM); set POINTAD_SLOW_TESTS=1")
def test_vit_l_random_weights_load_through_the_real_path(vit_l, tmp_path):
    path = tmp_path / "vit-l.safetensors"
    save_file({k: v.contiguous() for k, v in create_clip(vit_l, seed=1).state_dict().items()}, str(path))
    backbone = load_backbone(vit_l, path)
    features = backbone.encode_image(torch.randn(1, 3, 336, 336))
    assert features.patch_tokens.shape == (4, 1, 576, 768)
    with torch.no_grad():
        reference = backbone.clip.encode_image(torch.randn(1, 3, 336, 336, generator=torch.Generator().manual_seed(0)),
                                               normalize=True)
        ours = backbone.encode_image(torch.randn(1, 3, 336, 336, generator=torch.Generator().manual_seed(0)))
    assert (ours.global_feature - reference).abs().max() < 1e-5
