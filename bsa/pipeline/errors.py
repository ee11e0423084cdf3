"""Errors a user can act on: each names the file, line and field at fault."""

from __future__ import annotations


class BsaError(Exception):
    """Base class of every error the CLI reports as a clean one-line message."""


class ConfigError(BsaError):
    """A configuration file or `--set` override is invalid."""


class DataError(BsaError):
    """Bad input data, located as precisely as possible."""

    def __init__(self, path: object, message: str, line: int | None = None, field: str | None = None):
        self.path, self.line, self.field, self.message = str(path), line, field, message
        where = self.path + (f":{line}" if line is not None else "")
        what = f" field '{field}':" if field else ""
        super().__init__(f"{where}:{what} {message}")


class EndpointDown(BsaError):
    """An LLM endpoint cannot answer (refused, unknown host, bad key, unknown model, a dead local server):
    the run stops at once instead of recording every request as failed."""
