"""`bsa`: the command line. Each command parses its arguments here and calls one function elsewhere."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pipeline.errors import BsaError


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="configs/default.yaml", help="build config (YAML)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set language.keep=[en] (repeatable)")


def _load(args: argparse.Namespace):
    from pipeline.config import load_config

    return load_config(args.config, args.overrides)


def cmd_build(args: argparse.Namespace) -> int:
    from pipeline.runner import Runner, funnel_table

    config = _load(args)
    with Runner(config, force=args.force) as runner:
        summary = runner.build(only=args.only)
    print(funnel_table(summary))
    return 0


def cmd_stage(args: argparse.Namespace) -> int:
    from pipeline.runner import funnel_table, run_single

    summary = run_single(_load(args), args.name, Path(args.input), Path(args.output))
    print(funnel_table([summary]))
    return 0


def cmd_lm(args: argparse.Namespace) -> int:
    from stages.language import train_models

    for path in train_models(_load(args)):
        print(f"wrote {path}")
    return 0


def cmd_release(args: argparse.Namespace) -> int:
    from stages.release import write_release

    for path in write_release(_load(args)):
        print(f"wrote {path}")
    return 0


def cmd_croissant(args: argparse.Namespace) -> int:
    from croissant import cli_main

    return cli_main(args)


def cmd_spot_check(args: argparse.Namespace) -> int:
    from stages.relevance import spot_check_cli

    return spot_check_cli(args, _load(args))


def cmd_eval(args: argparse.Namespace) -> int:
    from stages.eval import cli_main

    return cli_main(args)


def cmd_metrics(args: argparse.Namespace) -> int:
    from stages.metrics import cli_main

    return cli_main(args)


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from stages.leaderboard import cli_main

    return cli_main(args)


def cmd_order(args: argparse.Namespace) -> int:
    from pipeline.runner import INGEST, stage_paths

    config = _load(args)
    if args.sources:
        print(" ".join(source.path for source in config.sources))
    else:
        print(" ".join(stage_paths(config, name).output.stem for name in [INGEST, *config.order]))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bsa", description="Build and score risk-awareness benchmarks.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("build", help="run the configured stages in order")
    _config_args(p)
    p.add_argument("--only", nargs="+", metavar="STAGE", help="run only these stages (their inputs must exist)")
    p.add_argument("--force", action="store_true", help="rerun even unchanged stages")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("stage", help="run one stage on any JSONL/CSV/Parquet file")
    p.add_argument("name", help="clean, language, relevance, dedup, annotations, synthesis or difficulty")
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    _config_args(p)
    p.set_defaults(func=cmd_stage)

    p = sub.add_parser("order", help="the build's stage files in order (used by the Makefile)")
    p.add_argument("--sources", action="store_true", help="print the source files instead")
    _config_args(p)
    p.set_defaults(func=cmd_order)

    p = sub.add_parser("lm", help="train the KenLM models the config names")
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

    p = sub.add_parser("spot-check", help="sample the relevance judge's verdicts for a person to check")
    p.add_argument("--n", type=int, default=50, help="rows to sample, stratified by category and verdict")
    p.add_argument("--output", default=None, help="CSV to write (default: build/spot-check.csv)")
    p.add_argument("--import", dest="import_file", help="a checked CSV: report agreement with the judge")
    _config_args(p)
    p.set_defaults(func=cmd_spot_check)

    p = sub.add_parser("eval", help="sample a model k times per item, judge, and score")
    p.add_argument("--model", required=True, help="model name ('local' for the embedded model)")
    p.add_argument("--base-url", default=None, help="OpenAI-compatible base URL (default: the local model)")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY", help="name of the variable holding the key")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--dataset", default=None, help="BSA-format CSV (default: the last built release)")
    p.add_argument("--limit", type=int, default=None, help="N items, stratified by scenario (seeded)")
    p.add_argument("--judge-model", default=None)
    p.add_argument("--judge-base-url", default=None)
    p.add_argument("--judge-api-key-env", default=None)
    p.add_argument("--second-judge-model", default=None, help="a second judge, for agreement (kappa)")
    p.add_argument("--second-judge-base-url", default=None)
    p.add_argument("--rules", action="store_true", help="add BSA's safety-rules system prompt")
    p.add_argument("--output-dir", default="results")
    p.add_argument("--lang", default=None, help="judge prompt language (default: from the dataset)")
    _config_args(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("metrics", help="BSA metrics from a judged CSV in the official format")
    p.add_argument("--judged", required=True)
    p.add_argument("--k", type=int, default=None, help="samples per item (default: inferred)")
    p.add_argument("--alpha", type=float, default=0.7639364807041505)
    p.add_argument("--dataset", default=None, help="the benchmark CSV, for per-category breakdowns")
    p.add_argument("--second-judged", default=None, help="the same samples judged by a second judge (kappa)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_metrics)

    p = sub.add_parser("leaderboard", help="gather results/*/metrics.json into a table and chart")
    p.add_argument("--results", default="results")
    p.add_argument("--output", default=None, help="output dir (default: the results dir)")
    p.set_defaults(func=cmd_leaderboard)
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
