"""Dataset registry: `datasets.yaml` names datasets, their format, root and options (design §2).

A registry entry only adds names, class lists and per-class options: `--format FMT --root DIR`
works without one (see `custom_entry`). Classes are whatever folders exist under the root.
The file is read by `read_yaml`, which bounds what a small file can make in memory (design §8).
"""

from __future__ import annotations

import reprlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from . import environment, strict
from .errors import ConfigError, DatasetError, first_line

FORMATS = ("mvtec3d", "eyecandies", "real3d", "folder")
ORGANIZED_FORMATS = ("mvtec3d", "eyecandies")  # formats whose samples come on an (H, W) grid of points
# `folder` (scans of one's own objects, design §2.5): the unit of the files' coordinates -> millimetres per unit
FOLDER_UNITS = {"mm": 1.0, "cm": 10.0, "m": 1000.0, "um": 0.001, "in": 25.4}
# What `read_yaml` takes: the repository's datasets.yaml is ~5 KB, nests 8 deep and expands its aliases to
# ~3 000 nodes and characters. A few hundred bytes of aliases can otherwise describe 10^9 nodes (a "billion
# laughs"), which every consumer that walks the value (validation, an error message) pays for.
MAX_YAML_BYTES = 256 * 1024
MAX_YAML_DEPTH = 32          # nesting, aliases expanded
MAX_YAML_EXPANDED = 1_000_000  # nodes plus scalar characters, aliases expanded


@dataclass(frozen=True, kw_only=True)
class FolderOptions:
    """A `folder` dataset's own options (datasets.yaml `options: folder: {...}`, per class in `class_options`).

    units: the unit of the files' coordinates (mm, cm, m, um, in). The folder format's default lengths (stated
        in millimetres: background plane distance, cluster radius) are converted to it; lengths written in
        `preprocess:` are in the files' unit, like every length in the registry.
    label_property: per-point ground truth from this PLY vertex property (or LAS/LAZ dimension), 0/1 per point,
        for a test sample that has no `ground_truth/<defect>/<stem>.txt` or `.npy` file. None: files only.
    """

    units: str = "mm"
    label_property: str | None = None

    def __post_init__(self):
        if self.units not in FOLDER_UNITS:
            raise ValueError(f"units {reprlib.repr(self.units)}; known: {', '.join(FOLDER_UNITS)}")

    @property
    def millimetres(self) -> float:
        """Millimetres per unit of the files."""
        return FOLDER_UNITS[self.units]


@dataclass(frozen=True, kw_only=True)
class DatasetEntry:
    """One dataset as the registry describes it.

    root: None only for generated datasets (their root is the cache, see `generate`).
    options: {"preprocess": {...}, "render": {...}} for every class; class_options[c] overrides them.
    generate: for built-in generated data, the generator's arguments (e.g. {"format": "real3d", "seed": 0}).
    view_plans: {plan name: its numbers for this dataset}, e.g. the released code's per-dataset
        "pointad-code" views (validated by render/view_plan.py when a build uses them).
    """

    name: str
    format: str
    root: Path | None = None
    classes: tuple[str, ...] | None = None
    aux_classes: tuple[str, ...] = ()
    options: dict[str, dict] = field(default_factory=dict)
    class_options: dict[str, dict[str, dict]] = field(default_factory=dict)
    generate: dict | None = None
    description: str = ""
    view_plans: dict[str, dict] = field(default_factory=dict)

    def __post_init__(self):
        # ValueError: strict.from_dict re-raises it as a ConfigError naming the file and the dataset
        if self.format not in FORMATS:
            raise ValueError(f"format {reprlib.repr(self.format)}; known formats: {', '.join(FORMATS)}")
        if self.root is None and self.generate is None:
            raise ValueError("needs a 'root'")
        if self.classes == ():  # an empty list: every class folder, as if none were listed
            object.__setattr__(self, "classes", None)
        sections = [("options", self.options)] + [(f"class_options.{c}", o) for c, o in self.class_options.items()]
        for where, section in sections:
            if "folder" in section and self.format != "folder":
                raise ValueError(f"'{where}.folder' holds options of the folder format, not of {self.format}")
            if "folder" in section:
                try:
                    strict.from_dict(FolderOptions, section["folder"], f"'{where}.folder'")
                except ConfigError as exc:  # as a ValueError, so the message gains the file and the dataset
                    raise ValueError(str(exc)) from None

    @classmethod
    def from_dict(cls, name: str, data: dict, source: str = "datasets.yaml") -> DatasetEntry:
        """Validate one entry; an unknown key or format is an error naming it."""
        return strict.from_dict(cls, data, f"{source}: dataset '{name}'", given={"name": name})

    def options_for(self, class_name: str) -> dict:
        """Options of one class: the entry's, with that class's overrides merged per section."""
        merged = {section: dict(values) for section, values in self.options.items()}
        for section, values in self.class_options.get(class_name, {}).items():
            merged.setdefault(section, {}).update(values)
        return merged

    def folder_options(self, class_name: str) -> FolderOptions:
        """The folder format's options of one class (defaults where the registry says nothing)."""
        return strict.from_dict(FolderOptions, self.options_for(class_name).get("folder", {}),
                                f"dataset '{self.name}' class '{class_name}' folder options")

    def with_root(self, root: Path) -> DatasetEntry:
        return replace(self, root=Path(root), generate=None)


def custom_entry(format: str, root: Path, reference: DatasetEntry | None = None) -> DatasetEntry:
    """An entry for the user's own data in a known format: classes from the folder names.

    reference: the registry's entry for the format's own dataset (`mvtec3d`, `eyecandies`, `real3d`, `folder`),
    whose preprocessing options and view plans (lengths in that format's unit), and for `folder` its folder
    options (units), the custom data takes. Its render and per-class options are that dataset's own choices
    (point sizes of its classes): a user's class that happens to share a name with one of them does not take them.
    """
    if format not in FORMATS:
        raise ConfigError(f"unknown format {format!r}; known formats: {', '.join(FORMATS)}")
    entry = DatasetEntry(name=Path(root).name or "custom", format=format, root=Path(root))
    if reference is not None and reference.format == format:
        taken = {section: reference.options[section] for section in ("preprocess", "folder")
                 if reference.options.get(section)}
        entry = replace(entry, options=taken, view_plans=reference.view_plans)
    return entry


def load_registry(path: Path | None = None) -> dict[str, DatasetEntry]:
    """Read datasets.yaml (default: `environment.registry_path()`) into entries by name."""
    path = Path(path) if path is not None else environment.registry_path()
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory, expected a registry file (datasets.yaml)")
    try:
        data = read_yaml(path)
    except FileNotFoundError:
        raise ConfigError(f"{path}: registry file not found (set POINTAD_REGISTRY or pass --format and --root)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: registry file unreadable ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: registry file is not text (byte {exc.start})") from exc
    except YamlTooLarge as exc:
        raise ConfigError(f"{path}: registry file {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({first_line(exc, limit=200)})") from None
    if not isinstance(data, dict) or not isinstance(data.get("datasets"), dict):
        raise ConfigError(f"{path}: expected a top-level 'datasets:' mapping")
    return {str(name): DatasetEntry.from_dict(str(name), entry, str(path)) for name, entry in data["datasets"].items()}


class YamlTooLarge(ValueError):
    """A YAML file beyond MAX_YAML_BYTES, MAX_YAML_DEPTH or MAX_YAML_EXPANDED, or whose aliases refer to
    themselves; str() is the reason, without the path."""


def read_yaml(path: Path):
    """`yaml.safe_load` of the file at `path`, bounded: YamlTooLarge for a file over MAX_YAML_BYTES, nested
    deeper than MAX_YAML_DEPTH, or whose aliases expand to more than MAX_YAML_EXPANDED nodes and characters or
    refer to themselves; the file's own OSError, UnicodeDecodeError or yaml.YAMLError otherwise."""
    with open(path, "rb") as file:
        raw = file.read(MAX_YAML_BYTES + 1)
    if len(raw) > MAX_YAML_BYTES:
        raise YamlTooLarge(f"is larger than {MAX_YAML_BYTES // 1024} KiB; a registry or a metadata file is a few KB")
    loader = _BoundedLoader(raw.decode("utf-8"))
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that counts nesting while it composes (before Python's recursion limit is reached) and
    measures the composed document with its aliases expanded before anything is built from it."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                line = self.peek_event().start_mark.line + 1
                raise YamlTooLarge(f"nests deeper than {MAX_YAML_DEPTH} levels (line {line})")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def get_single_node(self):
        node = super().get_single_node()
        if node is not None:
            _check_expansion(node)
        return node


def _check_expansion(root: yaml.Node) -> None:
    """YamlTooLarge if the node graph, aliases expanded, is deeper than MAX_YAML_DEPTH, larger than
    MAX_YAML_EXPANDED (a node counts 1, a scalar also its characters), or has a cycle (`&a [*a]`).

    Each distinct node is visited once (sizes and depths memoised), without recursion, so the check costs
    what the file holds, not what it expands to."""
    size, depth = {}, {}      # id(node) -> expanded size, depth; filled when a node is finished
    open_ = set()             # nodes entered and not finished: the ancestors of the node being entered
    stack = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            open_.discard(key)
            children = _children(node)
            size[key] = 1 + (len(node.value) if isinstance(node, yaml.ScalarNode)
                             else sum(size[id(c)] for c in children))
            depth[key] = 1 + max((depth[id(c)] for c in children), default=0)
            if size[key] > MAX_YAML_EXPANDED:
                raise YamlTooLarge(f"expands its aliases to more than {MAX_YAML_EXPANDED:,} nodes and characters "
                                   f"(line {node.start_mark.line + 1})")
            if depth[key] > MAX_YAML_DEPTH:
                raise YamlTooLarge(f"nests deeper than {MAX_YAML_DEPTH} levels with its aliases expanded "
                                   f"(line {node.start_mark.line + 1})")
            continue
        if key in size:
            continue
        open_.add(key)
        stack.append((node, True))
        for child in _children(node):
            if id(child) in open_:
                raise YamlTooLarge(f"has an alias inside its own anchor (line {child.start_mark.line + 1})")
            if id(child) not in size:
                stack.append((child, False))


def _children(node: yaml.Node) -> list:
    if isinstance(node, yaml.SequenceNode):
        return node.value
    if isinstance(node, yaml.MappingNode):
        return [item for pair in node.value for item in pair]
    return []


def resolve_dataset(name: str | None = None, *, format: str | None = None, root: Path | None = None,
                    registry: dict[str, DatasetEntry] | None = None) -> DatasetEntry:
    """The entry to use for a command's --dataset / --format / --root options.

    A relative registry root resolves against $POINTAD_DATA (default ./data); `root` overrides it.
    Generated datasets keep root None here: `render.datasets.materialize` fills it in.
    """
    if name is None:
        if format is None or root is None:
            raise ConfigError("name a dataset (--dataset) or give both --format and --root")
        if registry is None:
            try:
                registry = load_registry()
            except ConfigError:  # no usable registry: the format's built-in defaults alone
                registry = {}
        return custom_entry(format, root, registry.get(format))
    registry = load_registry() if registry is None else registry
    if name not in registry:
        raise DatasetError(f"unknown dataset '{name}'; known: {', '.join(sorted(registry))} (or use --format with --root)")
    entry = registry[name]
    if format is not None and format != entry.format:
        raise ConfigError(f"dataset '{name}' has format {entry.format}, not {format}")
    if root is not None:
        return entry.with_root(root)
    if entry.root is not None and not entry.root.is_absolute():
        return replace(entry, root=environment.data_base() / entry.root)
    return entry


def class_folders(entry: DatasetEntry) -> tuple[str, ...]:
    """Sorted names of the folders under the root (every one a potential class)."""
    root = entry.root
    if root is None or not root.is_dir():
        raise DatasetError(f"{root}: dataset root of '{entry.name}' does not exist "
                           "(pass --root, set POINTAD_DATA, or see README 'Real datasets')")
    return tuple(sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")))


def discover_classes(entry: DatasetEntry) -> tuple[str, ...]:
    """Default classes: those the registry lists that exist on disk (its order), else every folder."""
    present = class_folders(entry)
    if entry.classes is None:
        return present
    return tuple(c for c in entry.classes if c in present)


def select_classes(entry: DatasetEntry, wanted: list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """The classes to use: all present, or the wanted ones, each of which must exist on disk."""
    if not wanted:
        default = discover_classes(entry)
        if not default:
            raise DatasetError(f"{entry.root}: no class folders found for dataset '{entry.name}'")
        return default
    present = class_folders(entry)
    missing = [c for c in wanted if c not in present]
    if missing:
        raise DatasetError(f"{entry.root}: unknown class(es) {', '.join(missing)} in dataset '{entry.name}'; "
                           f"present: {', '.join(present) or 'none'}")
    return tuple(wanted)
