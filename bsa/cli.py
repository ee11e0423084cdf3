"""`bsa`: the command line. Each command parses its arguments here and calls one function elsewhere."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from bsa.benchmark import ALPHA
from bsa.pipeline.errors import BsaError


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="configs/default.yaml", help="build config (YAML)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set language.keep=[en] (repeatable)")


def _load(args: argparse.Namespace):
    from bsa import project

    return project.load_config(args.config, args.overrides)


def _runner(config, force: bool = False):
    from bsa.pipeline.runner import Runner
    from bsa.project import PROJECT

    return Runner(config, PROJECT, force=force)


def cmd_build(args: argparse.Namespace) -> int:
    from bsa.pipeline.stats import funnel_table

    if args.executor:
        args.overrides.append(f"executor={args.executor}")
    config = _load(args)
    valid = True
    with _runner(config, args.force) as runner:
        summary = runner.build(only=args.only)
        print(funnel_table(summary))
        if args.release:
            from bsa.release.publish import publish

            messages, valid = publish(runner)
            print("\n".join(messages))
    return 0 if valid else 1


def cmd_stage(args: argparse.Namespace) -> int:
    from bsa.pipeline.runner import run_single
    from bsa.pipeline.stats import funnel_table
    from bsa.project import PROJECT

    summary = run_single(_load(args), PROJECT, args.name, Path(args.input), Path(args.output))
    print(funnel_table([summary]))
    return 0


def cmd_lm(args: argparse.Namespace) -> int:
    from bsa.stages.language import STAGE, train_models

    config = _load(args)
    for path in train_models(STAGE.settings(config), config.build_dir):
        print(f"wrote {path}")
    return 0


def cmd_release(args: argparse.Namespace) -> int:
    from bsa.release.files import write_release

    for path in write_release(_load(args)):
        print(f"wrote {path}")
    return 0


def cmd_croissant(args: argparse.Namespace) -> int:
    from bsa.release.croissant import write_metadata
    from bsa.release.croissant.validate import validate

    file = Path(args.file) if args.file else None
    if file is not None and file.suffix.lower() == ".json":
        target = file
    else:
        facts = {key: getattr(args, key, None) for key in ("name", "license", "citation")}
        target, message = write_metadata(_load(args), file, Path(args.output) if args.output else None, facts)
        print(message)
    report = validate(target)
    print(report.summary())
    return 0 if report.ok else 1


def cmd_spot_check(args: argparse.Namespace) -> int:
    if args.run:
        from bsa.eval import spot_check

        run = Path(args.run)
        if args.import_file:
            found = spot_check.import_checked(run, Path(args.import_file))
            print(spot_check.format_agreement(found))
            print(f"wrote {run / spot_check.AGREEMENT}; {spot_check.rewrite_report(run)} shows it")
        else:
            print(spot_check.export(run, args.n, args.seed, Path(args.output) if args.output else None))
        return 0
    from bsa import review

    config = _load(args)
    if args.import_file:
        print(review.agreement_of(config, Path(args.import_file)))
    else:
        print(review.write_sheet(config, args.n, Path(args.output) if args.output else None))
    return 0


def cmd_review(args: argparse.Namespace) -> int:
    from bsa.release import review

    config = _load(args)
    if args.action == "export":
        print(review.export_review(config))
    else:
        print(review.import_reviews(config, [Path(f) for f in args.files]))
    return 0


def eval_request(args: argparse.Namespace, model: str = ""):
    """The typed request of the arguments of `bsa eval`, `sweep` and `judge` (the options they share)."""
    from dataclasses import fields

    from bsa.eval.naming import parse_samples
    from bsa.eval.run import EvalRequest

    given = {f.name: getattr(args, f.name) for f in fields(EvalRequest) if hasattr(args, f.name)}
    return EvalRequest(**{**given, "model": model, "sample": parse_samples(getattr(args, "sample", None))})


def _print_runs(results) -> None:
    from bsa.eval.metrics import HEADLINE
    from bsa.eval.run import TOY_WARNING
    from bsa.text.markdown import markdown_table

    if any(metrics["run"]["judge_is_toy"] for _, metrics in results):
        print(TOY_WARNING)
    print(markdown_table(["model", "items", *HEADLINE], [metrics for _, metrics in results]))
    for plan, _ in results:
        print(f"wrote {plan.out}/: samples.jsonl, judged.csv, metrics.json, report.md")


def cmd_eval(args: argparse.Namespace) -> int:
    from bsa.eval.many import models_to_run, run_models
    from bsa.multimodal import evaluate as mm

    config = _load(args)
    models = models_to_run(args.model, config)
    request = eval_request(args, models[0])
    if mm.is_multimodal_run(request, config):  # an image + text benchmark (bsa.multimodal.evaluate)
        results = run_models(request, models, config, mm.plan_multimodal, mm.run_multimodal)
        mm.print_runs(results, config)
        if len(results) > 1:
            from bsa.multimodal.leaderboard import build

            for path in build(args.output_dir):
                print(f"wrote {path}")
        return 0
    results = run_models(request, models, config)
    _print_runs(results)
    if len(results) > 1:
        from bsa.eval.leaderboard import build_leaderboard

        for path in build_leaderboard(args.output_dir):
            print(f"wrote {path}")
    return 0


def cmd_judge(args: argparse.Namespace) -> int:
    from bsa.eval.outside import judge_samples_file

    results = judge_samples_file(eval_request(args, args.model or ""), Path(args.samples), _load(args))
    _print_runs([results])
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from bsa.eval.sweep import Grid, run_sweep

    grid = Grid.of(args.temperatures, args.top_ps, args.top_ks)
    result = run_sweep(eval_request(args, args.model), grid, _load(args), resamples=args.resamples)
    print(result.table)
    for path in result.files:
        print(f"wrote {path}")
    return 0


def cmd_metrics(args: argparse.Namespace) -> int:
    import json

    from bsa.eval.metrics import HEADLINE, metrics_of_files
    from bsa.text.markdown import markdown_table

    results = metrics_of_files(args.judged, k=args.k, alpha=args.alpha, dataset=args.dataset,
                               second_judged=args.second_judged)
    if args.json:
        print(json.dumps(results, ensure_ascii=False, indent=2))
        return 0
    rows = [{"model": model, **figures} for model, figures in results.items()]
    print(markdown_table(["model", "items", "k", *HEADLINE], rows))
    for model, figures in results.items():
        unscored = figures["unscored"]
        if unscored["safety"] or unscored["thinking"]:
            print(f"{model}: unscored samples: safety {unscored['safety']}, thinking {unscored['thinking']}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    import json

    from bsa.eval.compare import compare_paths, comparison_text

    given = {name: getattr(args, name) for name in ("resamples", "seed") if getattr(args, name) is not None}
    result = compare_paths(args.a, args.b, alpha=args.alpha, **given)
    print(json.dumps(result, ensure_ascii=False, indent=2) if args.json else comparison_text(result))
    return 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from bsa.multimodal.leaderboard import build

    for path in build(args.results, args.output):  # text and multimodal runs
        print(f"wrote {path}")
    return 0


def cmd_viewer(args: argparse.Namespace) -> int:
    from bsa.eval.viewer import write_run_page
    from bsa.multimodal.leaderboard import is_multimodal_run
    from bsa.multimodal.viewer import write_mm_run_page

    for run in args.runs:
        multimodal = is_multimodal_run(Path(run) / "metrics.json")
        print(f"wrote {(write_mm_run_page if multimodal else write_run_page)(run)}")
    return 0


def _eval_args(p: argparse.ArgumentParser) -> None:
    """The options `bsa eval`, `judge` and `sweep` share (bsa.eval.run.EvalRequest)."""
    p.add_argument("--base-url", default=None, help="OpenAI-compatible base URL (default: the local model)")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY", help="name of the variable holding the key")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--dataset", default=None, help="BSA-format CSV (default: the last built release)")
    p.add_argument("--limit", type=int, default=None, help="N items, stratified by scenario (seeded)")
    p.add_argument("--judge-model", action="append", default=None,
                   help="a judge (repeat for an ensemble: three or more decide by majority)")
    p.add_argument("--judge-base-url", action="append", default=None, help="each judge's URL, in order")
    p.add_argument("--judge-api-key-env", default=None)
    p.add_argument("--second-judge-model", default=None, help="a second judge, for agreement (kappa)")
    p.add_argument("--second-judge-base-url", default=None)
    p.add_argument("--rules", action="store_true", help="add BSA's safety-rules system prompt")
    p.add_argument("--output-dir", default="results")
    p.add_argument("--lang", default=None, help="judge prompt language (default: from the dataset)")
    p.add_argument("--run", default=None, help="the run's name (default: the model and its changed settings)")
    _config_args(p)


def _sampling_args(p: argparse.ArgumentParser) -> None:
    """Sampling overrides, over the endpoint's and the eval section's (bsa.eval.naming.with_sampling)."""
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--top-k", type=int, default=None, help="sent in the request body (vLLM, llama.cpp)")
    p.add_argument("--max-tokens", type=int, default=None)
    p.add_argument("--sample", action="append", default=[], metavar="KEY=VALUE",
                   help="another field of the request body, e.g. min_p=0.05, seed=1 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bsa", description="Build and score risk-awareness benchmarks.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("build", help="run the configured stages in order")
    _config_args(p)
    p.add_argument("--only", nargs="+", metavar="STAGE", help="run only these stages (their inputs must exist)")
    p.add_argument("--force", action="store_true", help="rerun even unchanged stages")
    p.add_argument("--release", action="store_true",
                   help="then write build/release/ and its Croissant metadata (each skipped when unchanged)")
    p.add_argument("--executor", choices=["local", "ray"],
                   help="where the stages compute (the config's `executor:`; ray needs the [ray] extra)")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("stage", help="run one stage on any JSONL/CSV/Parquet file")
    p.add_argument("name", help="clean, language, relevance, dedup, annotations, synthesis or difficulty")
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    _config_args(p)
    p.set_defaults(func=cmd_stage)

    p = sub.add_parser("lm", help="retrain the KenLM models the config names (a build trains stale ones)")
    _config_args(p)
    p.set_defaults(func=cmd_lm)

    p = sub.add_parser("release", help="write build/release/ from the last stage's output")
    _config_args(p)
    p.set_defaults(func=cmd_release)

    p = sub.add_parser("croissant", help="write and validate Croissant metadata for a BSA-format CSV")
    p.add_argument("file", nargs="?", help="a BSA-format CSV (default: the build's release), "
                                           "or a Croissant JSON file to validate only")
    p.add_argument("--output", help="where to write the JSON-LD (default: <build_dir>/croissant/<CSV stem>/"
                                    "croissant.json for a CSV, the release's croissant.json without FILE)")
    p.add_argument("--name", help="dataset name (default: SOURCE.txt beside the CSV, else the file name)")
    p.add_argument("--license", help="licence, SPDX id or URL (default: SOURCE.txt, else release.license)")
    p.add_argument("--citation", help="how to cite the dataset (default: SOURCE.txt, else release.citation)")
    _config_args(p)
    p.set_defaults(func=cmd_croissant)

    p = sub.add_parser("spot-check", help="sample a judge's verdicts for a person to check: the relevance judge's, "
                                          "or with --run an eval run's judges'")
    p.add_argument("--run", help="an eval run directory (results/<run>): check its judges instead")
    p.add_argument("--n", type=int, default=50, help="rows to sample, stratified by category and verdict "
                                                     "(with --run: by scenario and the answer and reasoning labels)")
    p.add_argument("--seed", type=int, default=0, help="the sample's seed (with --run)")
    p.add_argument("--output", default=None, help="CSV to write (default: build/spot-check.csv; with --run: "
                                                  "<run>/spot-check.csv)")
    p.add_argument("--import", dest="import_file", help="a checked CSV (or, with --run, a Label Studio JSON "
                                                        "export): report agreement with the judge")
    _config_args(p)
    p.set_defaults(func=cmd_spot_check)

    p = sub.add_parser("review", help="the human double check of every release candidate (export, import)")
    actions = p.add_subparsers(dest="action", required=True)
    q = actions.add_parser("export", help="write build/review/: review.csv and Label Studio tasks.json/.xml")
    _config_args(q)
    q = actions.add_parser("import", help="merge the reviewers' files; report agreement and disagreements")
    q.add_argument("files", nargs="+", metavar="FILE", help="one per reviewer: a filled review.csv or a Label "
                                                            "Studio JSON export")
    _config_args(q)
    p.set_defaults(func=cmd_review)

    p = sub.add_parser("eval", help="sample a model k times per item, judge, and score")
    p.add_argument("--model", nargs="+", default=None,
                   help="model name(s), one run each ('local' for the embedded model; default: eval.models)")
    _eval_args(p)
    _sampling_args(p)
    p.add_argument("--images", choices=["auto", "attach", "describe"], default=None,
                   help="a multimodal benchmark's images: auto (sent to a `vision: true` model, else the "
                        "text-only fallback), attach (a model without vision is an error), describe (text only; "
                        "default: eval.images)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("judge", help="judge and score samples generated elsewhere into a run directory")
    p.add_argument("--samples", required=True,
                   help="JSONL/CSV, one sample a row: id or query (question), reasoning (reasoning_content), "
                        "answer; BSA's batch-script output as it is")
    p.add_argument("--model", default=None, help="the model's name (default: the file's model column, else "
                                                 "the file name)")
    _eval_args(p)
    p.set_defaults(func=cmd_judge)

    p = sub.add_parser("sweep", help="evaluate a grid of temperature x top_p x top_k, compare with the default")
    p.add_argument("--model", required=True, help="the model ('local' for the embedded model)")
    grid = "values (default: BSA's grid, bsa.eval.sweep.PAPER)"
    p.add_argument("--temperature", dest="temperatures", type=float, nargs="+", help=grid)
    p.add_argument("--top-p", dest="top_ps", type=float, nargs="+", help=grid)
    p.add_argument("--top-k", dest="top_ks", type=int, nargs="+", help=grid)
    p.add_argument("--resamples", type=int, default=None,
                   help="paired-test resamples against the default cell (default 2000)")
    _eval_args(p)
    p.add_argument("--max-tokens", type=int, default=None, help="per sample (default: the eval section's)")
    p.add_argument("--sample", action="append", default=[], metavar="KEY=VALUE",
                   help="another sampling field for every cell, e.g. min_p=0.05 (repeatable)")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("metrics", help="BSA metrics from a judged CSV in the official format")
    p.add_argument("--judged", required=True)
    p.add_argument("--k", type=int, default=None, help="samples per item (default: inferred)")
    p.add_argument("--alpha", type=float, default=ALPHA)
    p.add_argument("--dataset", default=None, help="the benchmark CSV, for per-category breakdowns")
    p.add_argument("--second-judged", default=None, help="the same samples judged by a second judge (kappa)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_metrics)

    p = sub.add_parser("compare", help="paired comparison of two runs on their shared items (B - A)")
    p.add_argument("a", help="run A: a results/<run>/ directory or a judged CSV in the official format")
    p.add_argument("b", help="run B: the same")
    p.add_argument("--resamples", type=int, default=None,
                   help="bootstrap and permutation resamples (default 2000)")
    p.add_argument("--seed", type=int, default=None, help="seed of the resampling (default 0)")
    p.add_argument("--alpha", type=float, default=ALPHA, help="the F-score's alpha")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("leaderboard", help="gather results/*/metrics.json into a table and chart")
    p.add_argument("--results", default="results")
    p.add_argument("--output", default=None, help="output dir (default: the results dir)")
    p.set_defaults(func=cmd_leaderboard)

    p = sub.add_parser("viewer", help="(re)write results/<run>/samples.html from a run's samples and metrics")
    p.add_argument("runs", nargs="+", help="run directories written by `bsa eval`")
    p.set_defaults(func=cmd_viewer)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    try:
        return int(args.func(args) or 0)
    except BsaError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
