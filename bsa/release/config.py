"""The config's `release:` section (what the card and the Croissant metadata say about the dataset) and its
`review:` section (how the reviewers' decisions decide what the release keeps)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from bsa.pipeline.config import BuildConfig, Section, validate_section


class Creator(Section):
    """A person or organisation credited as creator of the dataset."""

    name: str
    url: str | None = None
    email: str | None = None
    organization: bool = False


class Config(Section):
    """The `release:` section: what the card and the Croissant metadata say about the dataset."""

    license: str = "CC-BY-4.0"  # SPDX id (or a URL) of the released benchmark's licence
    license_url: str | None = None  # default: derived from a Creative Commons SPDX id
    citation: str | None = None  # BibTeX or plain text
    url: str | None = None  # the dataset's home page
    creators: list[Creator] = []
    keywords: list[str] = ["AI safety", "risk awareness", "reasoning models", "benchmark"]
    own_sources: list[str] = []  # sources written by the project itself: released under `license`
    date_published: str | None = None  # ISO date; default: the date of the build's last stage


def release_config(config: BuildConfig) -> Config:
    """The validated `release:` section."""
    return validate_section(config, "release", Config)


class ReviewConfig(Section):
    """The `review:` section: the rule that turns the reviewers' decisions into what the release keeps
    (bsa.release.review). It applies once a review is on file (`bsa review import`); without one the release
    keeps every candidate and its card says that no person reviewed them."""

    rule: Literal["unanimous", "majority"] = "unanimous"  # unanimous: every reviewer keeps the item
    min_reviewers: int = Field(default=2, ge=1)  # reviews an item needs; with fewer it is held back


def review_config(config: BuildConfig) -> ReviewConfig:
    """The validated `review:` section."""
    return validate_section(config, "review", ReviewConfig)
