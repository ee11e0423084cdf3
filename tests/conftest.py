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
