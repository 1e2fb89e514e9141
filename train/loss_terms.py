"""Which terms of the hybrid loss are on (design §5): their names, `LossTerms` and its parser.

No torch: a run's config names its terms (`TrainConfig.loss_terms`), and reading a run's metrics (eval)
needs the names, neither the loss itself (`train/losses.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

TERM_NAMES = ("3d_global", "3d_local", "2d_global", "2d_local")


@dataclass(frozen=True)
class LossTerms:
    """Which terms of the hybrid loss are on (design §5, for ablations); str() gives the canonical spelling."""

    enabled: frozenset[str] = frozenset(TERM_NAMES)

    def __post_init__(self):
        unknown = sorted(set(self.enabled) - set(TERM_NAMES))
        if unknown:
            raise ValueError(f"unknown loss term {unknown[0]!r}; known: {', '.join(TERM_NAMES)} (or 'all')")
        if not self.enabled:
            raise ValueError(f"no loss term enabled; choose from {', '.join(TERM_NAMES)} (or 'all')")
        object.__setattr__(self, "enabled", frozenset(self.enabled))

    def __contains__(self, name: str) -> bool:
        return name in self.enabled

    def names(self) -> tuple[str, ...]:
        """The enabled terms in the canonical order of TERM_NAMES."""
        return tuple(name for name in TERM_NAMES if name in self.enabled)

    def __str__(self) -> str:
        return "all" if len(self.enabled) == len(TERM_NAMES) else ",".join(self.names())


def parse_loss_terms(text: str) -> LossTerms:
    """Return the LossTerms named by `text`: "all" or a comma list such as "3d_global,2d_local".

    Spaces around names are ignored; an unknown or empty name raises ValueError naming it.
    """
    names = [part.strip() for part in text.split(",")]
    if names == ["all"]:
        return LossTerms()
    for name in names:
        if name not in TERM_NAMES:
            raise ValueError(f"unknown loss term {name!r} in {text!r}; known: {', '.join(TERM_NAMES)} (or 'all')")
    return LossTerms(frozenset(names))
