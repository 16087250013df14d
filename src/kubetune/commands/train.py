from __future__ import annotations

import argparse

from kubetune.commands import add_config_arguments, check_locations, config_from_args
from kubetune.distributed import is_main_process
from kubetune.errors import EXIT_USER_ERROR, KubetuneError, print_error

HELP = (
    "Fine-tune the classifier on tokenized data (LoRA, DeepSpeed ZeRO); run it with python or under "
    "torchrun. Resumes from the newest complete checkpoint in --output."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, required=True)
    parser.add_argument("--data", required=True, metavar="TOKENIZED", help="Output of `kubetune tokenize` (path or s3:// URI).")
    parser.add_argument("--output", required=True, metavar="OUT", help="Training output: checkpoints/, model/ (path or s3:// URI).")


def run(args: argparse.Namespace) -> int:
    """Exit 0, 2 after a user error (on any rank), 143 after SIGTERM (with a checkpoint saved).

    Under torchrun a rank that stops records why (kubetune.launchers.torchrun): that wrapper (the local
    launcher's and the pods' torchrun) then reports the one line itself, so the ranks stay quiet; under
    plain torchrun rank 0 prints it, and torchrun's failure summary shows any rank's line."""
    from kubetune.distributed import adopt_mpi_environment
    from kubetune.launchers.torchrun import record_rank_outcome, under_wrapper
    from kubetune.train.recipe import TrainingInterrupted, configure_logging, train

    adopt_mpi_environment()  # a rank started by mpirun (kubetune.launchers.mpirun) before anything asks its rank

    configure_logging()
    try:
        config = config_from_args(args)
        check_locations(args, config, inputs=("data",), outputs=("output",))
        train(config, args.data, args.output)
    except KubetuneError as error:
        record_rank_outcome(EXIT_USER_ERROR, str(error))
        if is_main_process() and not under_wrapper():
            raise  # the CLI prints it, one line per problem
        return EXIT_USER_ERROR  # every rank usually hits the same input problem: one report is enough
    except TrainingInterrupted as stop:
        record_rank_outcome(stop.exit_code, str(stop))
        if is_main_process() and not under_wrapper():
            print_error(str(stop), stop.exit_code)
        return stop.exit_code
    return 0
