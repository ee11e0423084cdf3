"""Shared fixtures: paths to ../shared data (skipped cleanly when absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
BSA_CSV = SHARED / "bsa" / "dataset.csv"
CORPORA = SHARED / "corpora"


def require_shared(path: Path) -> Path:
    """Skip the calling test (with a message) when a ../shared file is absent."""
    if not path.exists():
        pytest.skip(f"{path} not present (../shared is not beside the project)")
    return path


@pytest.fixture
def bsa_csv() -> Path:
    return require_shared(BSA_CSV)


@pytest.fixture
def corpora() -> Path:
    return require_shared(CORPORA)


@pytest.fixture
def fake_server():
    """Start scripted OpenAI-compatible test servers: `server = fake_server(faults={"500": 0.2}, ...)`
    (arguments of tests.fake_openai.FakeOpenAI); each is stopped when the test ends."""
    from tests.fake_openai import FakeOpenAI

    servers = []

    def start(**options):
        servers.append(FakeOpenAI(**options).start())
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def local_llm(tmp_path_factory):
    """The real embedded llama.cpp server (SmolLM2-135M), started once per test session: a started
    bsa.pipeline.llm.local_server.LocalServer (use its `base_url` as an endpoint's base_url). For `@pytest.mark.llama`."""
    from bsa.pipeline.config import LocalServerConfig
    from bsa.pipeline.llm.local_server import LocalServer

    server = LocalServer(LocalServerConfig(), tmp_path_factory.mktemp("llama") / "server.log")
    server.start()
    yield server
    server.stop()
