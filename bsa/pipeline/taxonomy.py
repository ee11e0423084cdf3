"""A label taxonomy of any depth (BSA: category -> subcategory; USB: primary -> secondary -> tertiary), from YAML.

A new domain is a new taxonomy file, not new code. A node is a name (a leaf) or `{name, subcategories: [...]}`;
`levels:` names the levels (default `[category, subcategory]`), and every leaf sits at the last level. Names are
unique in the whole tree, so a name's translation and its level are unambiguous; `translations: {lang:
{english: local}}` must name every node in each language it lists; `counts:` (nodes per level) is checked when
given. Labels are written `Category-Subcategory` (the first two levels), split on the first '-' (subcategory
names may contain hyphens, category names may not).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bsa.pipeline.errors import ConfigError

Tree = dict[str, "Tree"]  # name -> its children (a leaf has none)
DEFAULT_LEVELS = ("category", "subcategory")


@dataclass(frozen=True)
class Taxonomy:
    """Categories with their subcategories (to any depth), plus optional names in other languages."""

    name: str
    categories: dict[str, list[str]]  # the first two levels
    translations: dict[str, dict[str, str]] = field(default_factory=dict)  # lang -> {english: local}
    tree: Tree = field(default_factory=dict)  # every level
    levels: tuple[str, ...] = DEFAULT_LEVELS

    @classmethod
    def load(cls, path: str | Path) -> Taxonomy:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"{path}: cannot read taxonomy ({err})") from err
        levels = tuple(data.get("levels") or DEFAULT_LEVELS)
        tree = _tree(path, data.get("categories") or [], levels, 0)
        if not tree:
            raise ConfigError(f"{path}: taxonomy lists no categories")
        for cat in tree:
            if "-" in cat:
                raise ConfigError(f"{path}: category '{cat}' contains '-', which separates labels")
        names = _names(tree)
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ConfigError(f"{path}: name '{repeated[0]}' appears more than once in the taxonomy")
        translations = data.get("translations") or {}
        for lang, terms in translations.items():
            unknown = [t for t in terms if t not in names]
            missing = [n for n in names if n not in terms]
            if unknown or missing:
                raise ConfigError(f"{path}: translations.{lang}: " + (
                    f"'{unknown[0]}' is not a name of the taxonomy" if unknown else f"no name for '{missing[0]}'"))
        taxonomy = cls(data.get("name", path.stem), {c: list(subs) for c, subs in tree.items()}, translations,
                       tree, levels)
        counts = data.get("counts")
        if counts is not None and list(counts) != taxonomy.counts:
            raise ConfigError(f"{path}: counts {list(counts)} declared, the file holds {taxonomy.counts} "
                              f"({', '.join(levels)})")
        return taxonomy

    @property
    def labels(self) -> list[str]:
        """Every `Category-Subcategory` label, in file order."""
        return [f"{cat}-{sub}" for cat, subs in self.categories.items() for sub in subs]

    @property
    def depth(self) -> int:
        return len(self.levels)

    @property
    def counts(self) -> list[int]:
        """How many nodes each level holds."""
        counts, nodes = [], [self.tree or {c: dict.fromkeys(s, {}) for c, s in self.categories.items()}]
        for _ in self.levels:
            counts.append(sum(len(n) for n in nodes))
            nodes = [child for n in nodes for child in n.values()]
        return counts

    def paths(self) -> list[tuple[str, ...]]:
        """Every leaf's path from the top level, in file order."""
        out: list[tuple[str, ...]] = []

        def walk(node: Tree, prefix: tuple[str, ...]) -> None:
            for name, children in node.items():
                if children:
                    walk(children, (*prefix, name))
                else:
                    out.append((*prefix, name))

        walk(self.tree, ())
        return out

    def is_valid_path(self, *names: str | None) -> bool:
        """Whether the names (top level first, later levels optional) are a path of the tree."""
        node = self.tree
        for name in names:
            if not name:
                return True
            if name not in node:
                return False
            node = node[name]
        return True

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
        """A name of any level in `lang`, or the original when no translation is given."""
        return self.translations.get(lang, {}).get(term, term)


def _tree(path: Path, nodes: list[Any], levels: tuple[str, ...], depth: int) -> Tree:
    """The nested names of a node list, checked: each leaf at the last level, no sibling twice."""
    tree: Tree = {}
    for node in nodes:
        name, children = (node, []) if isinstance(node, str) else (node.get("name"), node.get("subcategories") or [])
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{path}: a {levels[min(depth, len(levels) - 1)]} without a name ({node!r})")
        if name in tree:
            raise ConfigError(f"{path}: '{name}' appears twice under the same parent")
        if depth + 1 < len(levels) and not children:
            raise ConfigError(f"{path}: {levels[depth]} '{name}' has no {levels[depth + 1]} (levels: "
                              f"{', '.join(levels)})")
        if depth + 1 >= len(levels) and children:
            raise ConfigError(f"{path}: '{name}' has children below the last level '{levels[-1]}'")
        tree[name] = _tree(path, children, levels, depth + 1)
    return tree


def _names(tree: Tree) -> list[str]:
    return [n for name, children in tree.items() for n in (name, *_names(children))]
