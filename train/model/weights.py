"""Find, read and check CLIP weight files (design §5) without ever downloading anything.

Search order for a config with a pretrained tag (ViT-L-14-336 / "openai"):
  1. --clip-weights PATH (a file, or a folder holding one of WEIGHT_NAMES);
  2. <pointad cache>/clip/<config name>/open_clip_model.safetensors (or open_clip_pytorch_model.bin),
     the place to put a manually downloaded file (`shared.environment.cache_dir()`, ~/.cache/pointad);
  3. the Hugging Face hub cache where open_clip's own download lands
     (~/.cache/huggingface/hub/models--timm--vit_large_patch14_clip_336.openai/snapshots/<rev>/...);
  4. OpenAI's `clip` package cache, ~/.cache/clip/ViT-L-14-336px.pt (a TorchScript archive: its tensors
     are read by `train.torchscript` without running any of its code; never torch.jit.load).
Missing everywhere -> WeightsNotFoundError before any work. A file that is unreadable, truncated,
holds non-finite values, or has other tensor names or shapes than the model -> CheckpointMismatchError
naming the file. Plain checkpoints are read with torch.load(weights_only=True) (`train.torch_files`).
"""

from __future__ import annotations

import struct
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

from ...shared.errors import CheckpointMismatchError, ConfigError, WeightsNotFoundError
from .model_config import DEFAULT_MODEL, ModelConfig, load_model_config
from .torch_files import UnreadableFile, is_torchscript, load_data, plain_reason
from .torchscript import ArchiveError, read_torchscript_state_dict

# open_clip's names for weights on the hub (open_clip.constants HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME)
WEIGHT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
# entries of OpenAI's TorchScript archives that are not weights
_NOT_WEIGHTS = {"input_resolution", "context_length", "vocab_size"}


def _pretrained_sources(config: ModelConfig) -> tuple[str, str]:
    """(hub repo id, legacy file name) of the config's pretrained tag; ("", "") if open_clip has none."""
    import open_clip  # public API only: the tag table

    cfg = open_clip.get_pretrained_cfg(config.open_clip_name, config.pretrained or "")
    repo = cfg.get("hf_hub", "").strip("/")
    if repo.count("/") > 1:  # 'org/name/file.bin' form
        repo = "/".join(repo.split("/")[:2])
    return repo, Path(cfg.get("url", "")).name


def pointad_weights_dir(config: ModelConfig, pointad_cache: Path | None = None) -> Path:
    """Folder where a manually placed weights file is looked for: <pointad cache>/clip/<config name>."""
    if pointad_cache is None:
        from ...shared.environment import cache_dir  # the one module that reads the environment

        pointad_cache = cache_dir()
    return Path(pointad_cache) / "clip" / config.name


def _in_folder(folder: Path) -> Path | None:
    for name in WEIGHT_NAMES:
        if (folder / name).is_file():
            return folder / name
    return None


def _in_hub_cache(repo: str, hf_cache: Path | None) -> Path | None:
    """A cached hub file of `repo`; huggingface_hub looks on disk only here, never over the network."""
    if not repo:
        return None
    from huggingface_hub import try_to_load_from_cache

    for name in WEIGHT_NAMES:
        found = try_to_load_from_cache(repo, name, cache_dir=str(hf_cache) if hf_cache else None)
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    return None


def _hub_repo_dir(repo: str, hf_cache: Path | None) -> Path:
    """The hub cache folder of a model repo: <cache>/models--<org>--<name>."""
    if hf_cache is None:
        from huggingface_hub.constants import HF_HUB_CACHE

        hf_cache = Path(HF_HUB_CACHE)
    return Path(hf_cache) / f"models--{repo.replace('/', '--')}"


def locate_weights(config: ModelConfig, clip_weights: str | Path | None = None, *,
                   pointad_cache: Path | None = None, hf_cache: Path | None = None,
                   openai_cache: Path | None = None) -> Path | None:
    """Return the weights file for `config` (None for a random-init config); raise WeightsNotFoundError.

    The three cache arguments override the default locations (tests; users set $POINTAD_CACHE / $HF_HOME).
    """
    if config.random_init:
        if clip_weights is not None:
            raise ConfigError(f"model '{config.name}' is {config.label}; --clip-weights does not apply to it")
        return None
    if clip_weights is not None:
        path = Path(clip_weights).expanduser()
        if path.is_dir():
            found = _in_folder(path)
            if found is None:
                raise WeightsNotFoundError(f"{path}: no {' or '.join(WEIGHT_NAMES)} in this folder (--clip-weights)")
            return found
        if not path.is_file():
            raise WeightsNotFoundError(f"{path}: CLIP weights file not found (--clip-weights)")
        return path
    ours = pointad_weights_dir(config, pointad_cache)
    found = _in_folder(ours)
    if found is not None:
        return found
    repo, legacy = _pretrained_sources(config)
    found = _in_hub_cache(repo, hf_cache)
    if found is not None:
        return found
    openai_dir = Path(openai_cache) if openai_cache else Path.home() / ".cache" / "clip"
    if legacy and (openai_dir / legacy).is_file():
        return openai_dir / legacy
    source = f" from https://huggingface.co/{repo}" if repo else ""
    searched = [str(_hub_repo_dir(repo, hf_cache))] if repo else []
    searched += [str(openai_dir / legacy)] if legacy else []
    also = f" (also searched {' and '.join(searched)})" if searched else ""
    raise WeightsNotFoundError(
        f"CLIP weights for {config.label} not found and nothing is downloaded: place {WEIGHT_NAMES[0]}{source} "
        f"at {ours / WEIGHT_NAMES[0]}, or pass --clip-weights PATH{also}")


def _looks_like_safetensors(path: Path) -> bool:
    """True if the file starts with a safetensors header: u64 length, then a JSON object."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    (length,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and 0 < length < path.stat().st_size


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a weights file into {name: CPU tensor}: safetensors, a torch checkpoint, or a TorchScript archive.

    Unwraps {"state_dict": ...} and a DataParallel "module." prefix; drops OpenAI's non-weight entries.
    Nothing in the file is ever run: a TorchScript archive's tensors are read by `train.torchscript`.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointMismatchError(f"{path}: is a directory, not a CLIP weights file")
    if not path.is_file():
        raise WeightsNotFoundError(f"{path}: CLIP weights file not found")
    try:
        if _looks_like_safetensors(path):
            from safetensors.torch import load_file

            data = load_file(str(path), device="cpu")
        elif is_torchscript(path):
            with zipfile.ZipFile(path) as archive:
                data = read_torchscript_state_dict(archive)
        else:
            data = load_data(path)
    except (UnreadableFile, ArchiveError) as exc:
        raise CheckpointMismatchError(f"{path}: cannot read CLIP weights: {exc}") from exc
    except Exception as exc:  # safetensors and zipfile have their own error types; all mean "not a usable file"
        raise CheckpointMismatchError(f"{path}: cannot read CLIP weights: {plain_reason(exc)}") from exc
    if isinstance(data, Mapping) and isinstance(data.get("state_dict"), Mapping):
        data = data["state_dict"]
    if not isinstance(data, Mapping) or not data:
        raise CheckpointMismatchError(f"{path}: holds {type(data).__name__}, not a mapping of weight tensors")
    state = {}
    for key, value in data.items():
        if key in _NOT_WEIGHTS:
            continue
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointMismatchError(f"{path}: entry {key!r} is {type(value).__name__}, not a weight tensor")
        state[key[len("module."):] if key.startswith("module.") else key] = value
    return state


def _example(names) -> str:
    names = sorted(names)
    return names[0] + (f", ... ({len(names)})" if len(names) > 1 else "")


def check_state_dict(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Size],
                     path: str | Path, label: str) -> None:
    """Raise CheckpointMismatchError unless `state` has exactly the names and shapes of `expected`, all finite."""
    missing = set(expected) - set(state)
    unexpected = set(state) - set(expected)
    reshaped = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != tuple(expected[k]))
    problems = []
    if missing:
        problems.append(f"{len(missing)} of {len(expected)} tensors missing ({_example(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected ({_example(unexpected)})")
    if reshaped:
        key = reshaped[0]
        problems.append(f"{len(reshaped)} of other shape ({key} is {tuple(state[key].shape)}, "
                        f"expected {tuple(expected[key])})")
    if problems:
        raise CheckpointMismatchError(f"{path}: not the weights of {label}: {'; '.join(problems)}")
    for key, tensor in state.items():
        if not tensor.is_floating_point():
            raise CheckpointMismatchError(f"{path}: {key} has dtype {tensor.dtype}, expected floating point")
        if not bool(torch.isfinite(tensor).all()):
            raise CheckpointMismatchError(f"{path}: {key} holds NaN or infinite values; the file is damaged")


def resolve_auto_model(model: str, clip_weights=None) -> tuple[str, str | None]:
    """`--model auto`: the paper's model when its weights are found, else the tiny one; other names as they are.

    Returns (model name, warning): the warning says why the tiny model with random weights was taken, for
    the command line to print loudly; None when nothing was substituted."""
    if model != "auto":
        return model, None
    try:
        locate_weights(load_model_config(DEFAULT_MODEL), clip_weights)
        return DEFAULT_MODEL, None
    except WeightsNotFoundError as exc:
        return "tiny", (f"{exc}\nusing the tiny model with RANDOM weights: a smoke run of the pipeline, "
                        "not PointAD results")
