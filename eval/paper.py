"""The PointAD paper's published per-class results (appendix K, Tables 18-25), for comparison with ours.

Data: `eval/paper_results.yaml` (percent as printed, its header says where each table comes from);
this module hands them out as fractions, keyed like our reports: class name or "mean", then metric.
"""

from __future__ import annotations

import functools
from pathlib import Path

import yaml

from ..shared.errors import ConfigError

RESULTS_FILE = Path(__file__).parent / "paper_results.yaml"
METRICS = ("i_auroc", "ap", "p_auroc", "aupro")


@functools.cache
def _load() -> dict:
    return yaml.safe_load(RESULTS_FILE.read_text())


def _check(name: str, value: str, known: list[str]) -> None:
    if value not in known:
        raise ConfigError(f"{RESULTS_FILE.name}: unknown {name} {value!r}; known: {', '.join(known)}")


def available() -> list[tuple[str, str, str, str, str]]:
    """(method, setting, train_dataset, test_dataset, block) of every published table, in file order."""
    return [(r["method"], r["setting"], r["train_dataset"], r["test_dataset"], r["block"])
            for r in _load()["results"]]


def published(method: str, setting: str, test_dataset: str, block: str,
              train_dataset: str | None = None) -> dict[str, dict[str, float | None]] | None:
    """{class or "mean": {metric: fraction}} of one published table, None where the paper has none.

    method: pointad, pointad-coop or clip-rendering; setting: one-vs-rest or cross-dataset (an unknown
    one is a ConfigError). block: point or multimodal (the paper has no RGB-only block).
    train_dataset None accepts the paper's (one table per rest of the key). Every class has all four
    METRICS; None where the paper prints "-".
    """
    entry = _find(method, setting, test_dataset, block, train_dataset)
    if entry is None:
        return None
    return {name: {m: None if values.get(m) is None else values[m] / 100 for m in METRICS}
            for name, values in entry["classes"].items()}


def _find(method, setting, test_dataset, block, train_dataset) -> dict | None:
    rows = _load()["results"]
    _check("method", method, sorted({r["method"] for r in rows}))
    _check("setting", setting, sorted({r["setting"] for r in rows}))
    for r in rows:
        if ((r["method"], r["setting"], r["test_dataset"], r["block"]) == (method, setting, test_dataset, block)
                and train_dataset in (None, r["train_dataset"])):
            return r
    return None


def training_classes(setting: str, train_dataset: str) -> tuple[str, ...] | None:
    """The auxiliary classes the paper names for a setting (one run each, results averaged), else None."""
    for entry in _load()["training"]:
        if (entry["setting"], entry["train_dataset"]) == (setting, train_dataset):
            return tuple(entry["classes"]) if entry["classes"] else None
    return None



def table_number(method: str, setting: str, test_dataset: str, block: str,
                 train_dataset: str | None = None) -> int | None:
    """The paper's table number of a `published` table, None where there is none."""
    entry = _find(method, setting, test_dataset, block, train_dataset)
    return None if entry is None else int(entry["table"])
