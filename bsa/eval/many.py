"""Several runs in one command (`bsa eval --model a b c`, `make eval MODELS="a b c"`, `eval.models`, and the
cells of a sweep): every run is planned before any model is called, so a bad option or a missing judge stops
them all at once; they share the judge and the reply cache (`<output_dir>/llm-cache.sqlite`), so a judge
request two runs make alike is sent once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from bsa.eval import run as eval_run  # by module: a test may stand in for plan_eval or run_eval
from bsa.eval.run import EvalPlan, EvalRequest, settings_of
from bsa.pipeline.config import BuildConfig
from bsa.pipeline.errors import ConfigError


def models_to_run(given: Sequence[str] | None, config: BuildConfig) -> list[str]:
    """The models asked for (--model), else the config's `eval.models`; ConfigError when neither names one."""
    models = list(given or settings_of(config).models)
    if not models:
        raise ConfigError(f"no model to evaluate: give MODEL=<name> or MODELS=\"a b\" (--model), or list "
                          f"endpoints under eval.models in {config.config_path}")
    return models


Planner = Callable[[EvalRequest, BuildConfig], EvalPlan]
Runner = Callable[[EvalPlan], dict]


def plan_all(requests: Sequence[EvalRequest], config: BuildConfig, planner: Planner | None = None
             ) -> list[EvalPlan]:
    """Every run's plan (by `planner`, default the text eval's); ConfigError when two would write the same
    directory."""
    plans = [(planner or eval_run.plan_eval)(request, config) for request in requests]
    seen: dict[Any, str] = {}
    for plan in plans:
        if plan.out in seen:
            raise ConfigError(f"runs '{seen[plan.out]}' and '{plan.name}' would both write {plan.out}")
        seen[plan.out] = plan.name
    return plans


def run_models(base: EvalRequest, models: Sequence[str], config: BuildConfig, planner: Planner | None = None,
               runner: Runner | None = None) -> list[tuple[EvalPlan, dict]]:
    """One run per model, with `base`'s options; (plan, metrics) in the models' order. `planner` and `runner`
    (default: the text eval's) plan and run another kind (bsa.multimodal.evaluate)."""
    if base.run and len(models) > 1:
        raise ConfigError(f"RUN={base.run} names one run, but {len(models)} models were given")
    plans = plan_all([replace(base, model=model) for model in models], config, planner)
    return [(plan, (runner or eval_run.run_eval)(plan)) for plan in plans]
