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
