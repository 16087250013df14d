from __future__ import annotations

import argparse
import sys

from kubetune.commands import add_config_arguments, check_locations, config_from_args
from kubetune.distributed import is_main_process
from kubetune.errors import EXIT_USER_ERROR, KubetuneError

HELP = (
    "Fine-tune the classifier on tokenized data (LoRA, DeepSpeed ZeRO); run it with python or under "
    "torchrun. Resumes from the newest complete checkpoint in --output."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, required=True)
    parser.add_argument("--data", required=True, metavar="TOKENIZED", help="Output of `kubetune tokenize` (path or s3:// URI).")
    parser.add_argument("--output", required=True, metavar="OUT", help="Training output: checkpoints/, model/ (path or s3:// URI).")


def run(args: argparse.Namespace) -> int:
    from kubetune.train.recipe import TrainingInterrupted, configure_logging, train

    configure_logging()
    try:
        config = config_from_args(args)
        check_locations(args, config, inputs=("data",), outputs=("output",))
        train(config, args.data, args.output)
    except KubetuneError:
        if is_main_process():
            raise  # the CLI prints it, one line per problem
        return EXIT_USER_ERROR  # every rank hits the same input problem; rank 0 has said it
    except TrainingInterrupted as stop:
        if is_main_process():
            print(f"kubetune: {stop}", file=sys.stderr)
        return stop.exit_code
    return 0
