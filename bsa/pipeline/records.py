"""Records: the core fields every stage can rely on, and the record id."""

from __future__ import annotations

import hashlib
import re
import unicodedata

CORE_FIELDS = ["id", "text", "lang", "source", "category", "subcategory", "is_risky", "meta"]
REJECT_REASON = "reject_reason"
REJECT_DETAIL = "reject_detail"
_SPACE = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """NFKC, case-folded, whitespace collapsed: the form ids and exact-duplicate checks use."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text)).strip().casefold()


def text_id(text: str) -> str:
    """A stable 32-hex id from the normalised text (the shape of BSA's ids)."""
    return hashlib.md5(normalize_text(text).encode("utf-8")).hexdigest()
