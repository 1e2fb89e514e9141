"""Errors the toolkit raises on purpose: each message is one line that says what and where."""


class PointADError(Exception):
    """Base of every error the command line reports as `Error: <message>` with exit code 1."""


class InputFileError(PointADError, ValueError):
    """A dataset file is missing, unreadable, truncated or inconsistent; the message starts with its path."""


class DatasetError(InputFileError):
    """A dataset cannot be used: unknown name or class, missing root, bad sample (design §8)."""


class ConfigError(PointADError, ValueError):
    """A configuration file or option is invalid; the message names the key or file."""


class StoreSchemaError(PointADError):
    """A render store has another format or schema version than this code reads."""


class CheckpointMismatchError(PointADError):
    """A checkpoint was made for another model or configuration."""


class WeightsNotFoundError(PointADError):
    """CLIP weights are needed but not present; the message says which file to place where."""


def first_line(exc_or_text, limit: int = 300, *, typed: bool = False) -> str:
    """Return the first line of an exception's message (or of a text), at most `limit` characters.

    Other libraries' messages may span lines or quote what was read; ours are one line (design §8), so a
    reason quoted from one goes through here. Blank space around the message is dropped; an exception whose
    message is empty gives its type's name. typed: `Type: first line` (the type alone when empty).
    """
    lines = str(exc_or_text).strip().splitlines()
    line = lines[0].strip() if lines else ""
    if isinstance(exc_or_text, BaseException) and (typed or not line):
        line = f"{type(exc_or_text).__name__}: {line}".rstrip(": ")
    return line if len(line) <= limit else line[: limit - 3] + "..."
