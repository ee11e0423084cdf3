"""Build and score benchmarks of risk awareness in reasoning models (Beyond Safe Answers style).

The rooms of the house:
    pipeline/    the framework: config, records, I/O, stage contract, runner, executors, LLM engine. It knows
                 nothing about safety and imports nothing from the rooms below.
    stages/      ingest and the seven build stages, each a declared contract (`STAGE`), nothing else
    text/        text machinery the stages share: character classes, MinHash, embeddings, KenLM training
    eval/        `bsa eval`: sampling, judges, BSA's metrics, the leaderboard
    release/     the release files, the dataset card, Croissant metadata (`release/croissant/`)
    benchmark.py the BSA format: scenarios, columns, labels and their parser
    project.py   the parts handed to the framework: the stage registry and the config sections
    review.py    people checking the LLM's verdicts (the spot check)
    cli.py       the `bsa` command
"""

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]  # prompts/, configs/ and data/ live here
