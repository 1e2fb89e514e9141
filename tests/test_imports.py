"""The import rules of design §1, read from the source (ast): every import counts, function bodies included.

A module's imports are its `import`/`from` statements anywhere in the file, plus the module paths it names in
strings for `importlib` (the lazy tables of `shared/cli.py` and the `__init__` files), resolved to full names.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "pointad"
STAGES = ("render", "train", "eval", "shared")

# Layer of a library module -> the layers it may import (design §1). "model" is the model library
# (train/model/) and the records a run leaves (its config, run record and loss-term names): what eval reads
# of the train stage. Commands are the `cli` modules, above the stages.
ALLOWED = {
    "shared": {"shared"},
    "render": {"shared", "render"},
    "model": {"shared", "model"},
    "train": {"shared", "model", "train"},
    "eval": {"shared", "model", "eval"},
    "command": {"shared", "render", "model", "train", "eval", "command"},
}
ONLY_DETECT_RENDERS = "pointad.eval.detect"  # eval's one door to the render stage (design §0.1)
UMBRELLA = "pointad.shared.cli"  # the only command that loads other commands
MODULE_STRING = re.compile(r"^(\.+|pointad\.)[A-Za-z_][\w.]*(:\w+)?$")


def module_name(path: Path) -> str:
    parts = [PACKAGE, *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_of(path: Path) -> str:
    name = module_name(path)
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def resolve(relative: str, level: int, package: str) -> str:
    """The absolute name of `from <level dots><relative> import ...` written in `package`."""
    if level == 0:
        return relative
    base = package.split(".")[: len(package.split(".")) - level + 1]
    return ".".join([*base, relative] if relative else base)


def imports_of(source: str, package: str, known: set[str]) -> set[str]:
    """Every package module `source` imports, at any depth of the file (function bodies included)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = resolve(node.module or "", node.level, package)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from . import synthetic`
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and MODULE_STRING.match(node.value):
            dotted = node.value.split(":")[0]
            level = len(dotted) - len(dotted.lstrip("."))
            found.add(resolve(dotted.lstrip("."), level, package) if level else dotted)
    return {name for name in found if name in known}


RUN_RECORDS = {"pointad.train.options", "pointad.train.run_record", "pointad.train.loss_terms"}


def layer(module: str) -> str:
    parts = module.split(".")
    if parts[-1] == "cli":
        return "command"
    if parts[1:3] == ["train", "model"] or module in RUN_RECORDS:
        return "model"
    return parts[1]


def package_sources() -> dict[str, Path]:
    return {module_name(path): path for stage in STAGES for path in sorted((ROOT / stage).rglob("*.py"))}


SOURCES = package_sources()
KNOWN = set(SOURCES) | {PACKAGE}
GRAPH = {name: imports_of(path.read_text(), package_of(path), KNOWN) for name, path in SOURCES.items()}


def test_the_graph_sees_function_local_and_lazy_imports():
    # function-local imports and the lazy tables are where the old sys.modules check went blind
    assert "pointad.train.sweep" in GRAPH["pointad.eval.cli"]  # `--train-missing`, imported inside the command
    assert "pointad.render.cli" in GRAPH[UMBRELLA]  # a string in the lazy group
    assert "pointad.shared.store" in GRAPH["pointad.shared"]  # the lazy table of shared/__init__.py
    assert "pointad.shared.h5store" in GRAPH["pointad.shared.store"]  # inside a method


def test_resolution_of_a_hand_made_module():
    source = "from ..shared.errors import X\ndef f():\n    from .camera import fit\n    import pointad.eval.metrics\n"
    known = {"pointad.shared.errors", "pointad.render.camera", "pointad.eval.metrics", "pointad.shared"}
    # `pointad.shared` itself is not imported: `from ..shared.errors` names the module, not the package
    assert imports_of(source, "pointad.render", known) == known - {"pointad.shared"}


def test_imports_inside_the_package_are_relative():
    absolute = []
    for path in SOURCES.values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == PACKAGE:
                absolute.append(f"{path.relative_to(ROOT)}:{node.lineno}")
            if isinstance(node, ast.Import) and any(a.name.split(".")[0] == PACKAGE for a in node.names):
                absolute.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert absolute == []


@pytest.mark.parametrize("module", sorted(SOURCES))
def test_module_keeps_its_layer(module):
    own = layer(module)
    allowed = ALLOWED[own] | ({"render"} if module == ONLY_DETECT_RENDERS else set())
    loads_command = {target for target in GRAPH[module] if layer(target) == "command"} - {module}
    broken = sorted({target for target in GRAPH[module] - {PACKAGE} if layer(target) not in allowed}
                    | (loads_command if module != UMBRELLA else set()))
    assert broken == [], f"{module} ({own}) imports {broken}"


def test_every_layer_is_used():
    # a rule table that no module falls under proves nothing
    assert {layer(module) for module in SOURCES} == set(ALLOWED)
