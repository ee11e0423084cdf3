"""Fingerprints: the one judge of whether a stage's output is stale.

A stage's fingerprint hashes its code (the source of every project module it reaches, followed through
imports anywhere in a module, function-level ones included, read from the files without running them), its
config section, the shared settings (language, seed, taxonomy), the settings of the endpoints it names that
can change a reply (`bsa.pipeline.llm.cache_key.RESULT_FIELDS`: not concurrency, timeouts, retry pacing or
prices), and its input. Prompts and resources a stage read are checked apart, by their recorded hashes.
"""

from __future__ import annotations

import ast
import hashlib
import json
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

from bsa import PROJECT_ROOT
from bsa.pipeline.config import BuildConfig
from bsa.pipeline.io import file_sha256
from bsa.pipeline.llm.cache_key import endpoint_result_settings, local_result_settings

PACKAGE = "bsa"


def hash_json(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def module_file(name: str) -> Path | None:
    """The source file of a project module (`bsa.text.minhash` -> bsa/text/minhash.py), None if there is none."""
    if name != PACKAGE and not name.startswith(f"{PACKAGE}."):
        return None
    base = PROJECT_ROOT.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imported(path: Path) -> set[str]:
    """Every project module a file imports, anywhere in it (parent packages too: importing runs them)."""
    stat = path.stat()
    return set(_imports_of(str(path), stat.st_mtime_ns, stat.st_size))


@lru_cache(maxsize=1024)
def _imports_of(path: str, mtime_ns: int, size: int) -> tuple[str, ...]:
    """The imports of one version of a file (its mtime and size make the cache key: an edit reads it anew)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(Path(path).read_bytes(), filename=path)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return tuple(sorted(name for name in found if module_file(name) is not None))


def _root_file(name: str) -> Path | None:
    """A stage's own module: a project file, or (a stage from elsewhere) the file it was loaded from."""
    path = module_file(name)
    if path is None and name in sys.modules:
        found = getattr(sys.modules[name], "__file__", None)
        path = Path(found) if found else None
    return path


def code_closure(modules: list[str]) -> dict[str, str]:
    """module -> sha256 of its file, for the given modules and every project module they reach."""
    names = set(modules)
    seen: dict[str, str] = {}
    todo = sorted(names)
    while todo:
        name = todo.pop()
        path = _root_file(name) if name in names else module_file(name)
        if name in seen or path is None:
            continue
        seen[name] = file_sha256(path)
        todo.extend(_imported(path) - set(seen))
    return dict(sorted(seen.items()))


def shared_settings(config: BuildConfig, endpoints: list[str]) -> dict[str, Any]:
    """The build-wide settings a stage's output depends on, with the endpoints it names (result fields only)."""
    used = {name: config.endpoints[name] for name in endpoints if name in config.endpoints}
    shared: dict[str, Any] = {"lang": config.lang, "seed": config.seed, "taxonomy": file_sha256(config.taxonomy),
                              "endpoints": {name: endpoint_result_settings(e) for name, e in used.items()}}
    if any(endpoint.embedded for endpoint in used.values()):
        shared["local"] = local_result_settings(config.llm.local)
    return shared


def fingerprint(name: str, modules: list[str], section: Any, config: BuildConfig, endpoints: list[str],
                input_hash: str) -> str:
    """The hash of everything that determines a stage's output (see the module docstring)."""
    return hash_json({"stage": name, "code": code_closure(modules), "config": section,
                      "shared": shared_settings(config, endpoints), "input": input_hash})
