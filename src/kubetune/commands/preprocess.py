from __future__ import annotations

import argparse

from kubetune.commands import add_config_arguments, check_locations, config_from_args

HELP = ("Load the labelled data, split it into train/validation/test, encode the labels and turn each row "
        "into a text; write a dataset directory (reused when inputs and config are unchanged).")
DEFAULT_OUTPUT = "runs/preprocessed"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--output", "-o", metavar="DIR_OR_URI", default=DEFAULT_OUTPUT,
                        help=f"Output directory or s3:// prefix (default: {DEFAULT_OUTPUT}).")


def run(args: argparse.Namespace) -> int:
    from kubetune.data.stages import preprocess

    config = config_from_args(args)
    check_locations(args, config, outputs=("output",), kind="preprocess")
    preprocess(config, args.output)
    return 0
