"""A two-level label taxonomy (category -> subcategories) loaded from YAML.

A new domain is a new taxonomy file, not new code. Labels are written `Category-Subcategory`,
split on the first '-' (subcategory names may contain hyphens, category names may not).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from bsa.pipeline.errors import ConfigError


@dataclass(frozen=True)
class Taxonomy:
    """Categories with their subcategories, plus optional names in other languages."""

    name: str
    categories: dict[str, list[str]]
    translations: dict[str, dict[str, str]] = field(default_factory=dict)  # lang -> {english: local}

    @classmethod
    def load(cls, path: str | Path) -> Taxonomy:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"{path}: cannot read taxonomy ({err})") from err
        categories = {c["name"]: list(c.get("subcategories", [])) for c in data.get("categories", [])}
        if not categories:
            raise ConfigError(f"{path}: taxonomy lists no categories")
        for cat in categories:
            if "-" in cat:
                raise ConfigError(f"{path}: category '{cat}' contains '-', which separates labels")
        return cls(data.get("name", path.stem), categories, data.get("translations", {}) or {})

    @property
    def labels(self) -> list[str]:
        """Every `Category-Subcategory` label, in file order."""
        return [f"{cat}-{sub}" for cat, subs in self.categories.items() for sub in subs]

    @staticmethod
    def split(label: str) -> tuple[str, str]:
        """('Category', 'Subcategory') from 'Category-Subcategory' (subcategory '' if absent)."""
        cat, _, sub = label.strip().partition("-")
        return cat.strip(), sub.strip()

    def is_valid(self, category: str | None, subcategory: str | None = None) -> bool:
        """Whether the category (and subcategory, when given) belong to this taxonomy."""
        if category not in self.categories:
            return False
        return not subcategory or subcategory in self.categories[category]

    def translate(self, term: str, lang: str) -> str:
        """A category or subcategory name in `lang`, or the original when no translation is given."""
        return self.translations.get(lang, {}).get(term, term)
