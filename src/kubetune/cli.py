"""The `kubetune` command line: one subcommand per stage, the map from name to module written once.

Each command module under `kubetune.commands` has `HELP`, `add_arguments(parser)` and
`run(args) -> int`; modules are imported lazily so `kubetune --help` doesn't load torch.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from kubetune import __version__
from kubetune.commands import resolve_config_argument
from kubetune.errors import KubetuneError, print_error

# subcommand → module in kubetune.commands. Stage, config section, subcommand and component share one name.
COMMANDS: dict[str, str] = {
    "validate": "validate",
    "preprocess": "preprocess",
    "tokenize": "tokenize",
    "train": "train",
    "evaluate": "evaluate",
    "promote": "promote",
    "predict": "predict",
    "demo-data": "demo_data",
    "run": "run",
    "compile": "compile",
    "submit": "submit",
    "schedule": "schedule",
    "status": "status",
    "job": "job",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubetune",
        description="Fine-tune transformer classifiers with LoRA and DeepSpeed ZeRO-2, on Kubeflow or on this machine.",
    )
    parser.add_argument("--version", action="version", version=f"kubetune {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="Debug logging.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"kubetune.commands.{module_name}")
        sub = subparsers.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        sub.set_defaults(_module=module)
    return parser


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("urllib3", "botocore", "s3fs", "fsspec", "filelock", "httpx", "aiobotocore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def report_error(error: KubetuneError) -> int:
    """Print a user error as one line per problem (no traceback); return the exit code."""
    return print_error(str(error), error.exit_code)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    try:
        resolve_config_argument(args)
        return int(args._module.run(args) or 0)
    except KubetuneError as error:
        return report_error(error)
    except KeyboardInterrupt:
        print("kubetune: interrupted", file=sys.stderr)
        return 130
