"""The framework: records, I/O, config, runner, LLM engine and CLI. Knows nothing about safety."""

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
