from __future__ import annotations

import argparse

from kubetune.commands import add_config_arguments, check_locations, config_from_args
from kubetune.commands.preprocess import DEFAULT_OUTPUT as PREPROCESSED

HELP = ("Tokenize a preprocess output with the model's fast tokenizer; write the token ids and "
        "token-length diagnostics (reused when input, tokenizer and config are unchanged).")
DEFAULT_OUTPUT = "runs/tokenized"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--input", "-i", metavar="DIR_OR_URI", default=PREPROCESSED,
                        help=f"The preprocess output (default: {PREPROCESSED}).")
    parser.add_argument("--output", "-o", metavar="DIR_OR_URI", default=DEFAULT_OUTPUT,
                        help=f"Output directory or s3:// prefix (default: {DEFAULT_OUTPUT}).")


def run(args: argparse.Namespace) -> int:
    from kubetune.data.stages import tokenize

    config = config_from_args(args)
    check_locations(args, config, inputs=("input",), outputs=("output",), kind="tokenize")
    tokenize(config, args.input, args.output)
    return 0
