"""Prompt templates as files: `prompts/<lang>/<name>.md`, with `$placeholders`, and an optional
`<name>.schema.json` beside it giving the JSON schema of the reply.

A template holds a system part and a user part, separated by lines `## system` and `## user`
(a file with neither is all user). Every load is hashed, so the manifest can record the prompts used.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from dataclasses import dataclass
from pathlib import Path

from bsa import PROJECT_ROOT
from bsa.pipeline.errors import ConfigError

PROMPTS_DIR = PROJECT_ROOT / "prompts"
_SECTION = re.compile(r"^## (system|user)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class Prompt:
    """A loaded template: render it with named values into chat messages."""

    name: str
    lang: str
    system: str
    user: str
    schema: dict | None
    sha256: str
    path: Path

    def render(self, **values: object) -> list[dict[str, str]]:
        """Chat messages with every `$placeholder` filled; a missing value is an error."""
        messages = []
        for role, template in (("system", self.system), ("user", self.user)):
            if not template:
                continue
            try:
                content = string.Template(template).substitute({k: str(v) for k, v in values.items()})
            except KeyError as err:
                raise ConfigError(f"{self.path}: placeholder ${err.args[0]} has no value") from err
            except ValueError as err:
                raise ConfigError(f"{self.path}: bad placeholder ({err}); write a literal $ as $$") from err
            messages.append({"role": role, "content": content})
        return messages


def parse_template(text: str) -> tuple[str, str]:
    """(system, user) parts of a template file's text."""
    parts = _SECTION.split(text)
    if len(parts) == 1:
        return "", text.strip()
    sections = dict(zip(parts[1::2], (p.strip() for p in parts[2::2]), strict=True))
    return sections.get("system", ""), sections.get("user", "")


class PromptLoader:
    """Loads prompts for one language (falling back to English) and remembers their hashes."""

    def __init__(self, lang: str = "en", root: Path = PROMPTS_DIR):
        self.lang, self.root = lang, Path(root)
        self.used: dict[str, str] = {}  # "<lang>/<name>" -> sha256

    def load(self, name: str, lang: str | None = None) -> Prompt:
        lang = lang or self.lang
        path = self.root / lang / f"{name}.md"
        if not path.exists():
            raise ConfigError(f"{path}: prompt not found (prompts live in {self.root}/<lang>/<name>.md)")
        raw = path.read_bytes()
        schema_path = path.with_suffix(".schema.json")
        schema = None
        digest = hashlib.sha256(raw)
        if schema_path.exists():
            schema_raw = schema_path.read_bytes()
            digest.update(schema_raw)
            try:
                schema = json.loads(schema_raw)
            except ValueError as err:
                raise ConfigError(f"{schema_path}: invalid JSON schema ({err})") from err
        system, user = parse_template(raw.decode("utf-8"))
        prompt = Prompt(name, lang, system, user, schema, digest.hexdigest(), path)
        self.used[f"{lang}/{name}"] = prompt.sha256
        return prompt
