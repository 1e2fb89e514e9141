"""Learnable text prompts of PointAD (design §5): the only trainable parameters of the model.

Templates, each with E learnable word embeddings right after the start token:
  agnostic (default): "[V1..VE] object."   and  "[W1..WE] damaged object."
  coop:               "[V1..VE] <class>."  and  "[W1..WE] damaged <class>."   (one pair per class name)
The V and W vectors are shared by all class names, so a coop prompt trained on one class scores
another by its name. Deep compound prompts: in text layers 2..depth the hidden states of the n_pos
positions after the start token are replaced by layer-specific learnable vectors (fp32).
Row 0 of every pair is "normal" (g_n), row 1 "anomalous" (g_a).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ...shared.errors import CheckpointMismatchError, ConfigError

VARIANTS = ("agnostic", "coop")
STATES = ("{}.", "damaged {}.")   # normal, anomalous; the learnable words go in front
STATE_FORMAT = "pointad-prompts"
STATE_VERSION = 1
_SETTINGS = ("variant", "n_ctx", "depth", "n_pos", "width", "class_names")


class PromptLearner(torch.nn.Module):
    """The learnable prompts; `forward(backbone)` gives text features (n_classes, 2, D).

    width: W of the text transformer; text_layers: its depth, which clamps `depth` (tiny has 4).
    n_ctx: E learnable words per template; depth: deep prompts in layers 2..depth (1 = none);
    n_pos: positions each deep prompt replaces (<= E, so the class words are never overwritten).
    seed: initialise from this seed (normal, std 0.02) instead of the global RNG.
    """

    def __init__(self, width: int, text_layers: int, *, variant: str = "agnostic",
                 class_names: Sequence[str] = (), n_ctx: int = 12, depth: int = 9, n_pos: int = 4,
                 init_std: float = 0.02, seed: int | None = None):
        super().__init__()
        if variant not in VARIANTS:
            raise ConfigError(f"unknown prompt variant '{variant}'; known: {', '.join(VARIANTS)}")
        class_names = tuple(str(name) for name in class_names)
        if variant == "agnostic" and class_names not in ((), ("object",)):
            raise ConfigError(f"the agnostic prompt says 'object', not class names; got {list(class_names)} "
                              "(use --prompt coop for class names)")
        if variant == "coop" and (not class_names or not all(name.strip() for name in class_names)):
            raise ConfigError("the coop prompt needs at least one non-empty class name")
        if n_ctx < 1 or depth < 1 or n_pos < 1 or text_layers < 1:
            raise ConfigError(f"n_ctx, depth, n_pos must be >= 1, got {n_ctx}, {depth}, {n_pos}")
        if n_pos > n_ctx:
            raise ConfigError(f"n_pos {n_pos} > n_ctx {n_ctx}: deep prompts would overwrite the template's words")
        self.variant = variant
        self.class_names = class_names if variant == "coop" else ("object",)
        self.n_ctx, self.n_pos, self.width = n_ctx, n_pos, width
        self.depth = min(depth, text_layers)
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        # ctx[0] = V (normal template), ctx[1] = W (anomalous template)
        self.ctx = torch.nn.Parameter(torch.randn(2, n_ctx, width, generator=generator) * init_std)
        # deep[j] replaces positions 1..n_pos at the input of text layer j + 2
        self.deep = torch.nn.Parameter(torch.randn(self.depth - 1, n_pos, width, generator=generator) * init_std)
        self._templates: dict = {}  # (names, device) -> (ids (2C, ctx), eot (2C,)); not state

    def settings(self) -> dict:
        """What a checkpoint must agree on: variant, n_ctx, depth, n_pos, width, class_names."""
        return {"variant": self.variant, "n_ctx": self.n_ctx, "depth": self.depth, "n_pos": self.n_pos,
                "width": self.width, "class_names": list(self.class_names)}

    @classmethod
    def for_backbone(cls, backbone, **kwargs) -> PromptLearner:
        """A learner sized for `backbone` (a FrozenCLIP); kwargs as for the constructor."""
        return cls(backbone.text_width, backbone.text_layers, **kwargs)

    def _template_ids(self, backbone, names: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids (2C, C_len) with E placeholder slots after the start token, and the EOT positions (2C,)."""
        key = (names, str(backbone.device), backbone.context_length)
        if key not in self._templates:
            texts = [state.format(name.replace("_", " ")) for name in names for state in STATES]
            ids = backbone.tokenize(texts)
            length = ids.shape[1]
            if bool((ids[:, length - self.n_ctx:] != 0).any()):  # the shifted tail must be padding
                longest = max(names, key=len)
                raise ConfigError(f"class name '{longest}' is too long for a {length}-token prompt "
                                  f"with {self.n_ctx} learnable words")
            slots = torch.zeros(len(texts), self.n_ctx, dtype=ids.dtype, device=ids.device)
            ids = torch.cat([ids[:, :1], slots, ids[:, 1:length - self.n_ctx]], dim=1)
            self._templates[key] = (ids, (ids == backbone.eot_token_id).int().argmax(dim=1))
        return self._templates[key]

    def forward(self, backbone, class_names: Sequence[str] | None = None) -> torch.Tensor:
        """Return text features (C, 2, D), L2-normalised: [g_n, g_a] per class name (C = 1 for agnostic).

        class_names: coop only; score other classes with the learned words (default: the training names).
        """
        if backbone.text_width != self.width:
            raise CheckpointMismatchError(f"prompts of width {self.width} do not fit {backbone.label} "
                                          f"(text width {backbone.text_width})")
        if self.depth > backbone.text_layers:
            raise CheckpointMismatchError(f"prompts of depth {self.depth} do not fit {backbone.label} "
                                          f"({backbone.text_layers} text layers)")
        if class_names is not None and self.variant == "agnostic":
            raise ConfigError("the agnostic prompt takes no class names")
        names = tuple(class_names) if class_names is not None else self.class_names
        if not names:
            raise ConfigError("no class names given")
        ids, eot = self._template_ids(backbone, names)
        with torch.no_grad():
            words = backbone.token_embedding(ids)                      # (2C, C_len, W), frozen
        ctx = self.ctx.to(words.device)
        ctx = ctx.unsqueeze(0).expand(len(names), -1, -1, -1).reshape(-1, self.n_ctx, self.width)
        embeddings = torch.cat([words[:, :1], ctx.to(words.dtype), words[:, 1 + self.n_ctx:]], dim=1)
        deep = list(self.deep.to(words.device).unbind(0)) if self.depth > 1 else None
        features = backbone.encode_text_embeddings(embeddings, eot, deep)
        return features.view(len(names), 2, -1)

    def state_for_checkpoint(self) -> dict:
        """Settings and CPU tensors, loadable with torch.load(weights_only=True)."""
        return {"format": STATE_FORMAT, "version": STATE_VERSION, **self.settings(),
                "ctx": self.ctx.detach().cpu().clone(), "deep": self.deep.detach().cpu().clone()}

    def load_state(self, state: dict, source: str = "checkpoint") -> None:
        """Copy a `state_for_checkpoint` dict in; any setting that differs -> CheckpointMismatchError naming it."""
        _check_format(state, source)
        mine = self.settings()
        for key in _SETTINGS:
            theirs = list(state[key]) if key == "class_names" else state[key]
            if theirs != mine[key]:
                raise CheckpointMismatchError(f"{source}: prompts were trained with {key}={theirs!r}, "
                                              f"this model uses {key}={mine[key]!r}")
        with torch.no_grad():
            for name in ("ctx", "deep"):
                tensor, param = state[name], getattr(self, name)
                if not isinstance(tensor, torch.Tensor) or tensor.shape != param.shape:
                    got = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
                    raise CheckpointMismatchError(f"{source}: '{name}' is {got}, expected {tuple(param.shape)}")
                param.copy_(tensor)

    @classmethod
    def from_state(cls, state: dict, source: str = "checkpoint") -> PromptLearner:
        """A learner with the settings and values of a `state_for_checkpoint` dict."""
        _check_format(state, source)
        names = tuple(state["class_names"]) if state["variant"] == "coop" else ()
        learner = cls(state["width"], state["depth"], variant=state["variant"], class_names=names,
                      n_ctx=state["n_ctx"], depth=state["depth"], n_pos=state["n_pos"])
        learner.load_state(state, source)
        return learner


def _check_format(state, source: str) -> None:
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointMismatchError(f"{source}: not a PointAD prompt state")
    if state.get("version") != STATE_VERSION:
        raise CheckpointMismatchError(f"{source}: prompt state version {state.get('version')}, "
                                      f"this version reads {STATE_VERSION}")
    missing = [key for key in (*_SETTINGS, "ctx", "deep") if key not in state]
    if missing:
        raise CheckpointMismatchError(f"{source}: prompt state lacks {missing}")
