"""The framework: records, I/O, config, the stage contract, runner and executors, the LLM engine.

Knows nothing about safety: it imports nothing from the rest of `bsa` (the project hands it its stages and
config sections, `bsa.project`).
"""
