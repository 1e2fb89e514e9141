"""The only module that reads the environment: data and cache locations.

POINTAD_DATA      base folder for dataset roots given as relative paths in datasets.yaml
POINTAD_CACHE     where generated data (the built-in synthetic datasets) is cached
POINTAD_REGISTRY  a datasets.yaml to use instead of the one at the repository root
POINTAD_LEASE_TTL seconds a writer lease on object storage outlives a killed holder (default 30; shared/lease.py)
RANK, WORLD_SIZE, LOCAL_RANK  set by torchrun for data-parallel training
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN  read by botocore itself; here only so that
                  an error message can be scrubbed of them (shared/remote.py)
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def data_base() -> Path:
    """Folder that relative dataset roots resolve against: $POINTAD_DATA, else ./data."""
    env = os.environ.get("POINTAD_DATA")
    return Path(env).expanduser() if env else Path.cwd() / "data"


def cache_dir() -> Path:
    """Folder for generated data: $POINTAD_CACHE, else $XDG_CACHE_HOME/pointad, else ~/.cache/pointad."""
    env = os.environ.get("POINTAD_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "pointad"


def registry_path() -> Path:
    """The datasets.yaml in use: $POINTAD_REGISTRY, else the repository's own."""
    env = os.environ.get("POINTAD_REGISTRY")
    return Path(env).expanduser() if env else REPO_ROOT / "datasets.yaml"


def distributed_env() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) when launched by torchrun with more than one process, else None."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))


def storage_secrets() -> tuple[str, ...]:
    """The object-storage credentials set in the environment, to be blanked out of any message we print
    (botocore reads them itself; we never pass, print or write them). Values under 4 characters are left
    out: blanking them would garble messages and hide nothing."""
    names = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ACCESS_KEY_ID")
    return tuple(value for value in (os.environ.get(name, "") for name in names) if len(value) >= 4)


def lease_ttl() -> float | None:
    """$POINTAD_LEASE_TTL in seconds, or None when unset (shared/lease.py's default applies; it checks the range).
    ConfigError in one line for a value that is not a number."""
    env = os.environ.get("POINTAD_LEASE_TTL", "").strip()
    if not env:
        return None
    try:
        return float(env)
    except ValueError:
        from .errors import ConfigError
        raise ConfigError(f"POINTAD_LEASE_TTL={env[:40]!r}: not a number of seconds") from None


def storage_environment() -> dict[str, str]:
    """The object-storage settings of this process's environment (every AWS_* variable: endpoint, region,
    credentials, profile), for worker processes started earlier; never printed or written anywhere."""
    return {name: value for name, value in os.environ.items() if name.startswith("AWS_")}


def set_storage_environment(settings: dict[str, str]) -> None:
    """Make this process's AWS_* variables `settings` exactly (a render worker, from its coordinator), and drop
    the object-storage clients made with the old ones."""
    if settings == storage_environment():
        return
    for name in [n for n in os.environ if n.startswith("AWS_") and n not in settings]:
        del os.environ[name]
    os.environ.update(settings)
    from .remote import drop_s3_clients  # here: remote.py imports this module
    drop_s3_clients()
