"""The config's `eval:` section: sampling, judging and scoring settings of `bsa eval`."""

from __future__ import annotations

from typing import Any, Literal

from bsa.benchmark import ALPHA
from bsa.pipeline.config import Section


class Config(Section):
    """The config's `eval:` section."""

    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int | None = None  # sent in the request body when set (vLLM, llama.cpp, SGLang take it)
    sample: dict[str, Any] = {}  # any other sampling field of the request body: min_p, repetition_penalty, seed
    max_tokens: int | None = 8192  # per sample on a remote model (reasoning models think at length)
    local_max_tokens: int = 160  # per sample on the embedded model (slow on CPU)
    judge_endpoint: str | None = None  # an endpoint under `endpoints:` to judge with (`local`: the toy judge)
    models: list[str] = []  # endpoints evaluated by `bsa eval` without --model, one run each
    judges: list[str] = []  # or several endpoints: an ensemble (bsa.eval.ensemble: the verdict by majority)
    # the judges' prompts from other files: a directory of judge_*.md, or {safety | <scenario>: file.md}
    judge_prompts: str | dict[str, str] | None = None
    judge_max_tokens: int | None = 1024
    local_judge_max_tokens: int = 96  # the judge schemas put the verdict first and cap the reason
    local_timeout: float = 900.0  # seconds a request may take on the embedded model (slow or busy CPUs)
    # does the model's chat template open the reasoning (no `<think>` in the reply)? auto: when any sample
    # of the run has only `</think>`
    template_opens_reasoning: bool | Literal["auto"] = "auto"
    judge_truncated: bool = False  # judge the answers of samples that stopped before their final answer
    resamples: int = 1000  # bootstrap resamples for the 95% intervals (0: none)
    alpha: float = ALPHA
    # a multimodal benchmark (bsa.multimodal.evaluate): auto sends each image to a `vision: true` model and
    # falls back to text only (the image's description or printed text) on any other; attach: the image or
    # an error; describe: text only even on a vision model
    images: Literal["auto", "attach", "describe"] = "auto"
