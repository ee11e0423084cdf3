"""The fields of a multimodal item, defined once for building and evaluating.

An item pairs an image with a text. Where the risk sits gives its combination: RIRT (risky image, risky
text), RIST (risky image, safe text), SIRT (safe image, risky text), SIST (both harmless alone, the pair
harmful: a cross-modal risk). Benign pairs (the over-refusal set) have no combination.
"""

from __future__ import annotations

IMAGE = "image"  # path of the image file: relative to the source file at ingest, to the release in a release
IMAGE_SHA256 = "image_sha256"  # sha256 of the image file's bytes
IMAGE_STYLE = "image_style"  # one of IMAGE_STYLES
IMAGE_SOURCE = "image_source"  # where the image came from: a collection's name, a URL, or "rendered"
IMAGE_DESCRIPTION = "image_description"  # what the image shows, in words: what a text-only judge reads
RENDER_SPEC = "render_spec"  # JSON of the typography spec a rendered image is rebuilt from exactly
IMG_RISK = "img_risk"  # bool: the image alone carries risk
TEXT_RISK = "text_risk"  # bool: the text alone carries risk
COMBINATION = "combination"  # one of COMBINATIONS, or BENIGN
CATEGORY_LEVELS = ["category_l1", "category_l2", "category_l3"]  # primary, secondary, tertiary category

IMAGE_STYLES = ("realistic", "typography", "synthetic")
COMBINATIONS = ("RIRT", "RIST", "SIRT", "SIST")
BENIGN = "benign"


def combination(img_risk: bool, text_risk: bool, pair_risky: bool = True) -> str:
    """The combination of a pair from where its risk sits; BENIGN for a harmless pair (pair_risky False)."""
    if not pair_risky:
        return BENIGN
    return f"{'R' if img_risk else 'S'}I{'R' if text_risk else 'S'}T"

# every field above, in the order ingest and the release put them after the text record's core fields
FIELDS = (IMAGE, IMAGE_SHA256, IMAGE_STYLE, IMAGE_SOURCE, IMAGE_DESCRIPTION, RENDER_SPEC, IMG_RISK, TEXT_RISK,
          COMBINATION, *CATEGORY_LEVELS)
RENDERED = "rendered"  # IMAGE_SOURCE of an image the tool rendered (RENDER_SPEC rebuilds it)
