"""`make stage`: validate the staged config file with its schema and write the compiled config next to it
(settings.COMPILED_CONFIG_FILE), which the function reads at start-up with the standard library alone.
An invalid file fails the step, so `make stage` and Cloud Build's stage step fail on it.

    PYTHONPATH=build/function python -m infra.stage_config build/function/personas.yaml

Run with the staged source first on the path: the fingerprint covers the staged schema's files, which are
the ones start-up compares it with.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from personas_warehouse.settings import COMPILED_CONFIG_FILE, ConfigError, compile_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.stage_config", description=__doc__.split("\n")[0])
    parser.add_argument("source", type=Path, help="the config file to validate (YAML, or JSON by .json suffix)")
    parser.add_argument(
        "--target", type=Path, default=None, help=f"the compiled file (default: {COMPILED_CONFIG_FILE.name} beside it)"
    )
    args = parser.parse_args(argv)
    target = args.target or args.source.with_name(COMPILED_CONFIG_FILE.name)
    try:
        compile_config(args.source, target)
    except ConfigError as exc:
        print(f"invalid config, nothing staged: {exc}", file=sys.stderr)
        return 1
    print(f"compiled {args.source} into {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
