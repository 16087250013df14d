from __future__ import annotations

import argparse
import sys

from kubetune.commands import add_config_arguments, config_from_args

HELP = "Check a run config; print the resolved config (every key) or every problem in it (exit 2)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--quiet", "-q", action="store_true", help="Print nothing when the config is valid.")


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    for warning in config.warnings:
        print(f"kubetune: warning: {warning}", file=sys.stderr)
    if not args.quiet:
        sys.stdout.write(config.to_yaml())
    return 0
