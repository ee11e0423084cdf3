"""The release and its Croissant metadata as steps after the stages, skipped when nothing they are made from
changed (`bsa build --release`, what `make build-dataset` runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bsa.pipeline.io import file_sha256
from bsa.pipeline.layout import INGEST, stage_paths
from bsa.pipeline.llm.cache_key import endpoint_result_settings
from bsa.pipeline.runner import Runner
from bsa.release.files import CROISSANT_FILE, DATA_FILES, last_output, release_dir, write_release
from bsa.release.images import IMAGES_DIR
from bsa.release.review import RELEASE_FILE, reviews_path

RELEASE_FILES = [*DATA_FILES, "funnel.txt", "funnel.png", "categories.png", "README.md"]


def _sha(path: Path) -> str | None:
    return file_sha256(path) if path.exists() else None


def made_from(runner: Runner) -> dict[str, Any]:
    """What the release is made from: the config (endpoints by the settings that change results), the rows,
    the ingest output (sources of seeds), every stage's stats and the human review on file."""
    config = runner.config
    data = config.model_dump(mode="json", exclude={"endpoints", "llm", "config_path"})
    data["endpoints"] = {name: endpoint_result_settings(e) for name, e in config.endpoints.items()}
    stats = {name: _sha(stage_paths(config, name).stats) for name in [INGEST, *config.order]}
    return {"config": data, "rows": _sha(last_output(config)), "ingest": _sha(stage_paths(config, INGEST).output),
            "stats": stats, "review": _sha(reviews_path(config))}


def publish(runner: Runner) -> tuple[list[str], bool]:
    """Write the release, then its Croissant metadata, each unless unchanged; (messages, metadata valid)."""
    from bsa.release.croissant import write_metadata
    from bsa.release.croissant.validate import validate

    config = runner.config
    out = release_dir(config)  # write_release says so when the last stage's output is missing
    messages: list[str] = []
    parts = made_from(runner)
    outputs = [*RELEASE_FILES, *([RELEASE_FILE] if reviews_path(config).exists() else [])]
    outputs += sorted(p.relative_to(out).as_posix() for p in (out / IMAGES_DIR).glob("*"))  # a lost image reruns
    if runner.run_task("release", ["bsa.release.files"], parts, [out / name for name in outputs],
                       lambda: write_release(config)):
        messages.append(f"wrote {out}/")
    target = out / CROISSANT_FILE
    report = None

    def describe() -> None:
        nonlocal report
        messages.append(write_metadata(config)[1])
        report = validate(target)

    parts = {**parts, "files": {name: _sha(out / name) for name in outputs}}
    runner.run_task("croissant", ["bsa.release.croissant", "bsa.release.croissant.validate"], parts, [target],
                    describe)
    if report is not None:
        messages.append(report.summary())
        if not report.ok:
            target.unlink(missing_ok=True)  # never leave metadata that failed validation to pass next time
        return messages, report.ok
    return messages, True
