"""Who serves an endpoint: a remote OpenAI-compatible server, or the embedded llama.cpp model.

The engine asks a provider where to send (`start`), how many requests to keep in flight (`workers`), what
the reply cache knows of it (`identity`), which model answers (`served_model`) and, for the embedded model,
the watch that restarts a dead server (`watch`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from bsa.pipeline.config import EndpointConfig, LocalServerConfig

if TYPE_CHECKING:
    from bsa.pipeline.llm.local_server import LocalServer, ServerWatch


class RemoteProvider:
    """An OpenAI-compatible server at the endpoint's base_url."""

    def __init__(self, endpoint: EndpointConfig):
        self.endpoint = endpoint

    def start(self) -> str:
        return self.endpoint.base_url

    def workers(self) -> int:
        """Requests in flight: the endpoint's concurrency, summed over its replicas."""
        from bsa.pipeline.llm.pool import replica_configs

        return sum(replica.concurrency for replica in replica_configs(self.endpoint))

    def identity(self) -> str:
        """The base_url: replicas are serving settings, the cache does not know them."""
        return self.endpoint.base_url.rstrip("/")

    def served_model(self) -> str:
        return self.endpoint.model


class EmbeddedProvider:
    """The embedded llama.cpp server (`base_url: local`): started on first use, watched, shared by every
    embedded endpoint; its slots (`llm.local.parallel`) set how many requests are in flight."""

    def __init__(self, config: LocalServerConfig, log_dir: Path | None = None):
        self.config = config
        self.log_dir = log_dir
        self.server: LocalServer | None = None
        self.watch: ServerWatch | None = None
        self._model_name: str | None = None
        self._moved: list[Callable[[str], None]] = []

    def start(self) -> str:
        """Start the server (once) and the watch that restarts it or declares it dead; its base URL."""
        from bsa.pipeline.llm.local_server import LocalServer, ServerWatch

        if self.server is None:
            log_dir = self.log_dir or Path(tempfile.gettempdir())
            self.server = LocalServer(self.config, log_dir / "llm-local-server.log")
        base_url = self.server.start()
        if self.watch is None:
            self.watch = ServerWatch(self.server, self._moved_to)
        return base_url

    def on_move(self, callback: Callable[[str], None]) -> None:
        """Call `callback(base_url)` when a restarted server listens on a new port."""
        self._moved.append(callback)

    def _moved_to(self, base_url: str) -> None:
        for callback in self._moved:
            callback(base_url)

    def workers(self) -> int:
        return self.config.parallel

    def served_model(self) -> str:
        """The GGUF file's name."""
        if self._model_name is None:
            from bsa.pipeline.llm.local_server import default_model_path

            path = self.config.model_path
            self._model_name = Path(path).name if path else default_model_path().name
        return self._model_name

    def identity(self) -> str:
        return f"local:{self.served_model()}"

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
