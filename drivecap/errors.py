"""The one exception type for failures a user can act on (bad config, missing asset, bad file)."""

from __future__ import annotations


class DrivecapError(Exception):
    """An expected failure with a one-line message that names the file, key or value and what to do.

    The CLI prints ``drivecap: error: <message>`` and exits with ``exit_code`` (2 by default), no traceback.
    """

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message.replace("\n", " "))
        self.exit_code = exit_code


class ConfigError(DrivecapError):
    """A configuration key, type or value is not allowed."""


class AssetError(DrivecapError):
    """A pinned asset is missing, corrupt or could not be fetched."""


class ModelError(DrivecapError):
    """An encoder ONNX, engine or model bundle is missing, corrupt or does not match."""


class BackendUnavailable(DrivecapError):
    """An inference backend cannot run on this machine (e.g. TensorRT without a GPU)."""
