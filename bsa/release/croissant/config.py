"""The `croissant:` config section: the Responsible-AI text of the release (Croissant's `rai:` fields).

What the build knows itself (its sources, stages, funnel, models and prompts) is written by
`bsa.release.croissant.build`; these texts add what only people know. The defaults hold for any build made with
this tool; a config should say more (the demo config names its tiny model's limits, for instance).
"""

from __future__ import annotations

from bsa.pipeline.config import BuildConfig, Section, validate_section


class ResponsibleAI(Section):
    """Free text for the `rai:` properties of the Croissant RAI vocabulary (shown in the card too)."""

    data_collection: str | None = None  # added after the generated list of sources
    data_collection_type: list[str] = []  # e.g. ["Secondary Data analysis", "Software Collection"]
    data_annotation_protocol: str | None = None  # added after the generated account of labelling
    data_preprocessing_protocol: str | None = None  # added after the generated funnel
    data_biases: str = ("Items inherit the choices of their sources (languages, topics, labelling conventions) "
                        "and of the models that filtered, labelled and wrote them; the taxonomy decides which "
                        "risks exist at all.")
    data_limitations: str = ("Queries, labels and risk summaries are written or checked by language models and "
                             "are not reviewed item by item by people: some items may be mislabelled, unnatural or "
                             "not risky. Some categories hold few items.")
    data_use_cases: str = ("Evaluating whether reasoning models recognise the risk in a request in their reasoning, "
                           "not only whether their final answer is safe (Beyond Safe Answers' protocol, `bsa eval`). "
                           "Not for training models to produce harmful content.")
    personal_sensitive_information: str = ("The queries describe harmful or sensitive requests by design. No "
                                           "personal data is collected on purpose; the sources were not screened "
                                           "for it by people.")
    data_social_impact: str | None = None
    data_release_maintenance_plan: str | None = None

    def for_release(self, images: bool) -> ResponsibleAI:
        """The texts for a release: of image + text items, the intended use says so unless the config set it."""
        if not images or "data_use_cases" in self.model_fields_set:
            return self
        return self.model_copy(update={"data_use_cases": PAIRS_USE_CASES})


PAIRS_USE_CASES = ("Evaluating whether multimodal models stay safe when the risk sits in the image, in the text, or "
                   "only in their combination (Safety Rate per combination, USB-SafeBench's protocol, `bsa eval`), "
                   "and whether they refuse benign pairs. Not for training models to produce harmful content.")


class Config(Section):
    """The `croissant:` section."""

    rai: ResponsibleAI = ResponsibleAI()


def croissant_config(config: BuildConfig) -> Config:
    """The validated `croissant:` section."""
    return validate_section(config, "croissant", Config)
