"""Run names and run settings: a run is named by its model and the settings that change its figures, so two
runs with different settings never share a directory.

The settings (`run_settings`): temperature, top_p, top_k, max_tokens, seed, every other sampling field sent in
the request body (`sample`: min_p, repetition_penalty, ...), the judge and the safety-rules prompt. The name
(`run_name`) is the model, `+rules` with the rules prompt, then, for each setting that differs from the
default one, a part after `__`:

    qwq-32b                               the defaults (eval: temperature 0.6, top_p 0.95, no top_k, ...)
    qwq-32b__t0.8                         temperature 0.8
    qwq-32b+rules__t0.4-p0.5-k20          temperature 0.4, top_p 0.5, top_k 20, with the rules prompt
    qwq-32b__m4096-s1-min_p0.05           max_tokens 4096, seed 1, min_p 0.05 (other fields by name, sorted)
    qwq-32b__judge-gpt-4o                 a judge other than the config's eval.judge_endpoint
    qwq-32b__judge-a+b+c                  three judges deciding by majority (bsa.eval.ensemble.deciding)
    qwq-32b__prompts-1a2b3c4d             judge prompts from other files (eval.judge_prompts)
    local__text-only                      a multimodal benchmark, the model reading each image in words

Codes: t temperature, p top_p, k top_k, m max_tokens, s seed; values as Python's `g` format. The judge is
part of the name only when the config names a default judge (`eval.judge_endpoint`) and the run uses
another. The prompts part, the first 8 hex digits of the sha256 of the overriding files' hashes
(`prompts_part`), is there only when `eval.judge_prompts` is set, so such a run never overwrites the
default one. `--run NAME` (`RUN=`) names a run by hand. The directory is the name with every character other
than letters, digits and `._+-` replaced by `_` (`results_dir`). The full settings go into metrics.json
(`run.settings`), and a run never overwrites a directory whose metrics.json records other settings
(`check_free`).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from bsa.pipeline.config import EndpointConfig, parse_override
from bsa.pipeline.errors import ConfigError
from bsa.pipeline.llm.cache_key import SAMPLING_FIELDS

CODES = {"temperature": "t", "top_p": "p", "top_k": "k", "max_tokens": "m", "seed": "s"}
SEPARATOR, JUDGE_PART, PROMPTS_PART, RULES = "__", "judge-", "prompts-", "+rules"
TOP_K = "top_k"  # sent in the request body beside the endpoint's extra_body (OpenAI has no such field)
UNSAFE = re.compile(r"[^\w.+-]+")


def parse_samples(assignments: list[str] | None) -> dict[str, Any]:
    """`--sample KEY=VALUE` (repeatable) -> {key: value}, values parsed as YAML (`min_p=0.05` is a float)."""
    sample: dict[str, Any] = {}
    for text in assignments or []:
        keys, value = parse_override(text)
        if len(keys) != 1:
            raise ConfigError(f"--sample '{text}': expected KEY=VALUE with a plain key (e.g. min_p=0.05)")
        sample[keys[0]] = value
    return sample


def with_sampling(endpoint: EndpointConfig, defaults: dict[str, Any],
                  overrides: dict[str, Any]) -> EndpointConfig:
    """The endpoint with sampling fields added: `defaults` where the endpoint sets none, then `overrides`
    over everything. temperature, top_p, max_tokens and seed are endpoint fields (the seed grows by the
    sample index); any other key (top_k, min_p, ...) goes into the request body through `extra_body`."""
    fields: dict[str, Any] = {}
    extra = dict(endpoint.extra_body)
    for given, overriding in ((defaults, False), (overrides, True)):
        for key, value in given.items():
            if value is None:
                continue
            if key in SAMPLING_FIELDS:
                if overriding or getattr(endpoint, key) is None:
                    fields[key] = value
            elif overriding or key not in extra:
                extra[key] = value
    return endpoint.model_copy(update={**fields, "extra_body": extra})


def run_settings(model: EndpointConfig | None, judge: str, rules: bool,
                 prompts: dict[str, str] | None = None, images: str | None = None) -> dict[str, Any]:
    """What a run's figures depend on besides the benchmark: sampling, judge, rules (None: not known, e.g.
    generations made elsewhere) and, only when set, the judge prompts' overrides (key -> sha256) and how a
    multimodal run's model got the images when they were not attached (`images`, e.g. TEXT_ONLY)."""
    body = dict(model.extra_body) if model else {}
    settings: dict[str, Any] = {name: getattr(model, name) if model else None
                                for name in ("temperature", "top_p", "max_tokens", "seed")}
    settings[TOP_K] = body.pop(TOP_K, None)
    own = {"prompts": dict(sorted(prompts.items()))} if prompts else {}
    own.update({"images": images} if images else {})
    return {**settings, "sample": dict(sorted(body.items())), "judge": judge, "rules": rules, **own}


def prompts_part(prompts: dict[str, str]) -> str:
    """The run name's part for judge prompt overrides (key -> sha256): `prompts-<8 hex digits>`."""
    digest = hashlib.sha256(json.dumps(prompts, sort_keys=True).encode()).hexdigest()
    return f"{PROMPTS_PART}{digest[:8]}"


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str | int | bool) or value is None:
        return str(value).lower() if isinstance(value, bool) or value is None else str(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def run_name(model: str, settings: dict[str, Any], default: dict[str, Any], default_judge: str | None) -> str:
    """`<model>[+rules][__<changed sampling>][__judge-<judge>][__prompts-<hash>]` (the module docstring)."""
    name = f"{model}{RULES}" if settings["rules"] else model
    parts = [f"{code}{_text(settings[field])}" for field, code in CODES.items()
             if settings[field] != default[field]]
    sample, base = settings["sample"], default["sample"]
    parts += [f"{key}{_text(sample.get(key))}" for key in sorted({*sample, *base}) if sample.get(key) != base.get(key)]
    if parts:
        name += SEPARATOR + "-".join(parts)
    if default_judge and settings["judge"] != default_judge:
        name += f"{SEPARATOR}{JUDGE_PART}{settings['judge']}"
    if settings.get("prompts"):
        name += SEPARATOR + prompts_part(settings["prompts"])
    if settings.get("images"):
        name += SEPARATOR + settings["images"]
    return name


def results_dir(root: str | Path, name: str) -> Path:
    """The run's directory: `root/<name>`, the name made filesystem-safe."""
    safe = UNSAFE.sub("_", name).strip("_")
    if not safe or safe in (".", ".."):
        raise ConfigError(f"run name '{name}' gives no usable directory name")
    return Path(root) / safe


def recorded_settings(out: Path) -> dict[str, Any] | None:
    """The settings a finished run in `out` recorded (None: no run there, or one from before settings)."""
    path = out / "metrics.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))["run"].get("settings")
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def check_free(out: Path, settings: dict[str, Any]) -> None:
    """ConfigError when `out` holds a run with other settings: a run never overwrites another."""
    recorded = recorded_settings(out)
    if recorded is None or recorded == json.loads(json.dumps(settings)):
        return
    changed = ", ".join(f"{key} {recorded.get(key)!r} there, {value!r} now" for key, value in settings.items()
                        if recorded.get(key) != value)
    raise ConfigError(f"{out} holds a run with other settings ({changed}): name this run with RUN=<name> "
                      f"(--run), or move the old one away")
