from __future__ import annotations

import argparse

from kubetune.commands import add_config_arguments

HELP = (
    "Run the whole pipeline on this machine (kfp.local, torchrun, a local MLflow store). "
    "With no arguments: the demo on the built-in ledger data and the embedded MiniLM model."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--run-id", help="Name of the run (its outputs go to <storage.runs_uri>/<run id>); default: time-based.")


def run(args: argparse.Namespace) -> int:
    import sys

    from kubetune.pipeline.local import PipelineTerminated, format_summary, run_local

    try:
        summary = run_local(args.config, args.overrides, run_id=args.run_id)
    except PipelineTerminated:
        print("kubetune: terminated; the steps were stopped and the MLflow run ended KILLED", file=sys.stderr)
        return PipelineTerminated.exit_code
    print("\n" + format_summary(summary), flush=True)
    return 0
