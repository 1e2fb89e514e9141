"""The frozen CLIP of PointAD (design §5): DPAM vision features and prompt-embedding text encoding.

The only module that knows open_clip's internals (pinned open_clip_torch 3.3.0): the CLIP class and
its attributes, the visual tower's pre-transformer modules, the residual blocks' ln_1 / attn
(nn.MultiheadAttention: in_proj_weight, in_proj_bias, out_proj) / ls_1 / ln_2 / mlp / ls_2, the text
tower's causal mask, ln_final and projection, and the factory's architecture registry.

Letters: B images, S pixels per side, G patch grid side (24 at 336 px with 14 px patches), N = 1 + G*G
tokens, W transformer width, D embedding dimension, L tapped layers, T texts, C context length (77).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.transformer import QuickGELU, ResidualAttentionBlock, VisionTransformer

from ...shared.errors import ConfigError
from .model_config import ModelConfig, check_image_size
from .weights import check_state_dict, locate_weights, read_state_dict

CLIP_MEAN = tuple(OPENAI_DATASET_MEAN)  # (0.48145466, 0.4578275, 0.40821073), RGB
CLIP_STD = tuple(OPENAI_DATASET_STD)    # (0.26862954, 0.26130258, 0.27577711)

_REGISTERED: set[str] = set()  # architecture names this module added to open_clip's registry


def normalize(images) -> torch.Tensor:
    """Return (B, 3, S, S) float32 CLIP input. images: (B, S, S, 3) uint8 0..255, or float in [0, 1]."""
    images = torch.as_tensor(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be (B, S, S, 3), got {tuple(images.shape)}")
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    mean = torch.tensor(CLIP_MEAN, device=x.device)
    std = torch.tensor(CLIP_STD, device=x.device)
    return ((x - mean) / std).permute(0, 3, 1, 2).contiguous()


def encode_views(backbone, images: np.ndarray, device, autocast: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Vision features of (B, V, S, S, 3) renderings: global (B, V, D), patches (L, B*V, G*G, D), float32."""
    b, v = images.shape[:2]
    check_image_size(backbone.config, images.shape[2], "renderings")  # stores are checked by name before this
    pixels = normalize(torch.from_numpy(images.reshape(b * v, *images.shape[2:])).to(device))
    with torch.no_grad(), torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16,
                                         enabled=autocast):
        features = backbone.encode_image(pixels)
    return features.global_feature.float().reshape(b, v, -1), features.patch_tokens.float()


def open_clip_architecture(config: ModelConfig) -> dict:
    """open_clip's architecture dict for `config`, registering `config.open_clip_config` under its name.

    open_clip 3.3.0's `add_model_config` only takes files, so an inline architecture goes straight into
    the factory's registry; afterwards `open_clip.create_model(name)` and `get_tokenizer(name)` know it.
    """
    name = config.open_clip_name
    if config.open_clip_config is not None:
        registry = open_clip.factory._MODEL_CONFIGS
        if name in registry and name not in _REGISTERED:
            raise ConfigError(f"model config '{config.name}': open_clip_name '{name}' is an open_clip built-in; "
                              "an inline open_clip_config needs a new name")
        registry[name] = copy.deepcopy(config.open_clip_config)
        _REGISTERED.add(name)
    arch = open_clip.get_model_config(name)
    if arch is None:
        raise ConfigError(f"model config '{config.name}': open_clip has no architecture '{name}'")
    where = f"model config '{config.name}' ({name})"
    if bool(arch.get("quick_gelu", False)) != config.quick_gelu:
        raise ConfigError(f"{where}: quick_gelu is {config.quick_gelu} but the architecture has "
                          f"{bool(arch.get('quick_gelu', False))}; use the '-quickgelu' architecture for OpenAI weights")
    vision, text = arch["vision_cfg"], arch["text_cfg"]
    if arch.get("custom_text") or "timm_model_name" in vision or "hf_model_name" in text:
        raise ConfigError(f"{where}: only plain CLIP ViT architectures are supported")
    if vision.get("image_size") != config.image_size:
        raise ConfigError(f"{where}: image_size {config.image_size}, architecture has {vision.get('image_size')}")
    if config.pretrained is not None:
        tag = open_clip.get_pretrained_cfg(name, config.pretrained)
        if tag and bool(tag.get("quick_gelu", False)) != config.quick_gelu:
            raise ConfigError(f"{where}: weights '{config.pretrained}' were trained with "
                              f"quick_gelu={bool(tag.get('quick_gelu', False))}, the config says {config.quick_gelu}")
    return arch


def create_clip(config: ModelConfig, *, seed: int = 0, device: str | torch.device | None = None):
    """Build the open_clip CLIP of `config` with seeded random weights (device "meta": shapes only, no memory)."""
    arch = open_clip_architecture(config)
    if device is not None and torch.device(device).type == "meta":
        with torch.device("meta"):
            return open_clip.CLIP(**arch)
    with torch.random.fork_rng(devices=[]):  # deterministic without disturbing the caller's RNG
        torch.manual_seed(seed)
        model = open_clip.CLIP(**arch)
    return model.to(device) if device is not None else model


def expected_shapes(config: ModelConfig) -> tuple[dict[str, torch.Size], set[str]]:
    """({tensor name: shape} of the state dict, names of non-persistent buffers), from a meta-device build.

    A TorchScript archive's state dict also lists the non-persistent buffers (the causal mask); they
    are rebuilt by the model, so a reader drops them.
    """
    model = create_clip(config, device="meta")
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    return shapes, {name for name, _ in model.named_buffers()} - set(shapes)


@dataclass(frozen=True)
class VisionFeatures:
    """What the vision tower gives per image (design §5), all L2-normalised along D."""

    global_feature: torch.Tensor       # (B, D) class token of the original path -> ln_post -> proj
    patch_tokens: torch.Tensor         # (L, B, G*G, D) surgery path at each tapped layer -> ln_post -> proj
    tap_layers: tuple[int, ...]        # the L layers, 1-based
    grid_size: int                     # G; patch g is at row g // G, column g % G


class FrozenCLIP(torch.nn.Module):
    """Frozen CLIP in eval mode: `encode_image` with the DPAM dual path, `encode_text_embeddings` for prompts."""

    def __init__(self, config: ModelConfig, clip_model, weights_path: Path | None = None):
        super().__init__()
        self.config = config
        self.weights_path = weights_path
        self.clip = clip_model
        self._check_architecture()
        for param in self.clip.parameters():
            param.requires_grad_(False)
        self.clip.eval()
        self._tokenizer = open_clip.get_tokenizer(config.open_clip_name)

    @classmethod
    def from_config(cls, config: ModelConfig, weights: str | Path | None = None, *, seed: int = 0) -> FrozenCLIP:
        """Build `config`'s model: seeded random weights if `config.random_init`, else the weights file given.

        The file is read and checked against the architecture before the model is built, so a wrong file
        fails fast with CheckpointMismatchError naming it.
        """
        if weights is None:
            if not config.random_init:
                raise ConfigError(f"model '{config.name}' needs a weights file; use load_backbone to locate it")
            return cls(config, create_clip(config, seed=seed))
        path = Path(weights)
        shapes, rebuilt = expected_shapes(config)
        state = {k: v for k, v in read_state_dict(path).items() if k not in rebuilt}
        check_state_dict(state, shapes, path, config.label)
        model = create_clip(config, seed=seed)
        model.load_state_dict(state, strict=True)
        return cls(config, model, weights_path=path)

    def _check_architecture(self) -> None:
        """ConfigError unless the model is a ViT CLIP whose blocks this module can run, taps and DPAM in range."""
        visual, where = self.clip.visual, f"model config '{self.config.name}'"
        if not isinstance(visual, VisionTransformer) or visual.attn_pool is not None or visual.pool_type != "tok" \
                or visual.final_ln_after_pool or visual.proj is None:
            raise ConfigError(f"{where}: the vision tower is not a class-token CLIP ViT")
        for block in (*visual.transformer.resblocks, *self.clip.transformer.resblocks):
            if type(block) is not ResidualAttentionBlock or hasattr(block, "ln_1_kv") \
                    or not block.attn._qkv_same_embed_dim or block.attn.in_proj_weight is None:
                raise ConfigError(f"{where}: unsupported transformer block {type(block).__name__}")
        if self.config.quick_gelu and not all(isinstance(b.mlp.gelu, QuickGELU) for b in visual.transformer.resblocks):
            raise ConfigError(f"{where}: quick_gelu is set but the vision blocks do not use QuickGELU")
        if self.clip.text_pool_type != "argmax" or not isinstance(self.clip.text_projection, torch.nn.Parameter):
            raise ConfigError(f"{where}: the text tower is not CLIP's (EOT pooling, linear projection)")
        layers = len(visual.transformer.resblocks)
        blocks = self.config.dual_path_blocks
        if blocks and blocks[-1] != layers:
            raise ConfigError(f"{where}: dual_path_blocks must end at the last block ({layers}), got {list(blocks)}")
        if self.config.tap_layers[-1] > layers:
            raise ConfigError(f"{where}: tap_layers {list(self.config.tap_layers)} beyond the {layers} blocks")

    def train(self, mode: bool = True) -> FrozenCLIP:
        """CLIP stays in eval mode whatever the caller asks (frozen; its patch dropout must stay off)."""
        super().train(mode)
        self.clip.eval()
        return self

    @property
    def label(self) -> str:
        return self.config.label

    @property
    def embed_dim(self) -> int:
        """D, the joint embedding dimension."""
        return self.clip.visual.output_dim

    @property
    def text_width(self) -> int:
        """W of the text transformer (the width of token embeddings and deep prompts)."""
        return self.clip.transformer.width

    @property
    def text_layers(self) -> int:
        return len(self.clip.transformer.resblocks)

    @property
    def vision_layers(self) -> int:
        return len(self.clip.visual.transformer.resblocks)

    @property
    def context_length(self) -> int:
        return self.clip.context_length

    @property
    def grid_size(self) -> int:
        return self.clip.visual.grid_size[0]

    @property
    def device(self) -> torch.device:
        return self.clip.visual.conv1.weight.device

    # ---- vision ---------------------------------------------------------------------------------

    def _embed_patches(self, images: torch.Tensor) -> torch.Tensor:
        """open_clip's steps before the blocks, with its own modules: (B, 3, S, S) -> (B, N, W) batch-first."""
        visual = self.clip.visual
        x = visual.conv1(images.to(visual.conv1.weight.dtype))  # (B, W, G, G)
        x = x.flatten(2).transpose(1, 2)                          # (B, G*G, W), row-major patches
        cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
        x = visual.patch_dropout(x)                               # identity in eval mode
        return visual.ln_pre(x)

    @staticmethod
    def _run_block(block, x: torch.Tensor, batch_first: bool, attn_mask=None) -> torch.Tensor:
        """open_clip's own block forward on batch-first x, whatever layout the transformer uses."""
        if batch_first:
            return block(x, attn_mask=attn_mask)
        return block(x.transpose(0, 1), attn_mask=attn_mask).transpose(0, 1)

    @staticmethod
    def _dual_block(block, h: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One DPAM block (design §5) on batch-first (B, N, W) states: original path h, surgery path s.

        h <- h + Attn_qk(LN1(h)); h <- h + MLP(LN2(h));  s <- s + Attn_vv(LN1(h)), no MLP on s.
        Attn_vv is the block's attention with values in place of queries and keys: same in_proj,
        out_proj and per-head scale 1/sqrt(W/heads). One projection serves both paths.
        """
        attn = block.attn
        q, k, v = F.linear(block.ln_1(h), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
        heads = attn.num_heads

        def split(t):  # (B, N, W) -> (B, heads, N, W / heads)
            return t.unflatten(-1, (heads, -1)).transpose(1, 2)

        q, k, v = split(q), split(k), split(v)
        original = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        surgery = F.scaled_dot_product_attention(v, v, v).transpose(1, 2).flatten(2)
        h_next = h + block.ls_1(attn.out_proj(original))
        h_next = h_next + block.ls_2(block.mlp(block.ln_2(h_next)))
        return h_next, s + block.ls_1(attn.out_proj(surgery))

    def _project(self, tokens: torch.Tensor) -> torch.Tensor:
        """ln_post, visual projection, L2 norm: (..., W) -> (..., D)."""
        visual = self.clip.visual
        return F.normalize(visual.ln_post(tokens) @ visual.proj, dim=-1)

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> VisionFeatures:
        """Return the DPAM features of CLIP-normalised images (B, 3, S, S) (see `normalize`).

        Blocks before the dual path run open_clip's own forward. A tapped layer before the first dual
        block (or with no dual path) gives the original path's tokens there. Autocast-safe (bf16 on GPU).
        """
        expected = (3, self.config.image_size, self.config.image_size)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"images must be (B, {', '.join(map(str, expected))}), got {tuple(images.shape)}")
        transformer = self.clip.visual.transformer
        start, taps = self.config.dual_path_start, set(self.config.tap_indices)
        h = self._embed_patches(images)
        s = None
        tapped = []
        for index, block in enumerate(transformer.resblocks):
            if start is not None and index >= start:
                h, s = self._dual_block(block, h, h if s is None else s)
            else:
                h = self._run_block(block, h, transformer.batch_first)
            if index in taps:
                tapped.append(self._project((h if s is None else s)[:, 1:]))
        return VisionFeatures(global_feature=self._project(h[:, 0]), patch_tokens=torch.stack(tapped),
                              tap_layers=self.config.tap_layers, grid_size=self.grid_size)

    # ---- text -----------------------------------------------------------------------------------

    def tokenize(self, texts: str | list[str]) -> torch.Tensor:
        """CLIP BPE ids (T, C) int64 on the model's device: start token, text, end token (EOT), zeros."""
        return self._tokenizer(texts).to(self.device)

    @property
    def sot_token_id(self) -> int:
        return self._tokenizer.sot_token_id

    @property
    def eot_token_id(self) -> int:
        return self._tokenizer.eot_token_id

    def token_embedding(self, ids: torch.Tensor) -> torch.Tensor:
        """CLIP's (frozen) word embeddings of ids (T, C) -> (T, C, W)."""
        return self.clip.token_embedding(ids.to(self.device))

    def encode_text_embeddings(self, token_embeddings: torch.Tensor, eot_positions: torch.Tensor,
                               deep_prompts=None) -> torch.Tensor:
        """Return L2-normalised text features (T, D) of token embeddings (T, C, W) (design §5).

        eot_positions: (T,) index of each sequence's end token, where the feature is pooled.
        deep_prompts: None, or a sequence of (n_pos, W) tensors; entry j replaces the hidden states of
        positions 1..n_pos (after the start token) at the input of text layer j + 2 (1-based), i.e.
        layers 2..len + 1. Differentiable with respect to token_embeddings and deep_prompts.
        """
        clip = self.clip
        count, length, width = token_embeddings.shape
        if length != self.context_length or width != self.text_width:
            raise ValueError(f"token_embeddings must be (T, {self.context_length}, {self.text_width}), "
                             f"got {tuple(token_embeddings.shape)}")
        prompts = list(deep_prompts) if deep_prompts is not None else []
        blocks = clip.transformer.resblocks
        if len(prompts) > len(blocks) - 1:
            raise ValueError(f"{len(prompts)} deep prompt layers given; the text tower has {len(blocks)} "
                             f"layers, so at most {len(blocks) - 1} (layers 2..{len(blocks)})")
        dtype = clip.transformer.get_cast_dtype()
        x = token_embeddings.to(dtype) + clip.positional_embedding.to(dtype)
        for index, block in enumerate(blocks):
            if 1 <= index <= len(prompts):
                prompt = prompts[index - 1]
                n_pos = prompt.shape[0]
                prompt = prompt.to(x.dtype).unsqueeze(0).expand(count, -1, -1)
                x = torch.cat([x[:, :1], prompt, x[:, 1 + n_pos:]], dim=1)
            x = self._run_block(block, x, clip.transformer.batch_first, attn_mask=clip.attn_mask)
        x = clip.ln_final(x)
        rows = torch.arange(count, device=x.device)
        pooled = x[rows, eot_positions.to(x.device)] @ clip.text_projection
        return F.normalize(pooled, dim=-1)

    def encode_text(self, texts: str | list[str]) -> torch.Tensor:
        """L2-normalised features (T, D) of plain sentences (the clip-rendering baseline's prompts)."""
        ids = self.tokenize(texts)
        return self.encode_text_embeddings(self.token_embedding(ids), ids.argmax(dim=-1))


def load_backbone(config: ModelConfig, clip_weights: str | Path | None = None, *, seed: int = 0) -> FrozenCLIP:
    """Locate the weights (WeightsNotFoundError before any work), then build the frozen model.

    Random-init configs (tiny) need no file and use `seed`.
    """
    path = locate_weights(config, clip_weights)
    return FrozenCLIP.from_config(config, path, seed=seed)
