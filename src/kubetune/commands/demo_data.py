from __future__ import annotations

import argparse

from kubetune.distributed import is_main_process, print_main

HELP = ("Write the built-in demo ledger (supplier, description, department, amount, payment date and "
        "method → account_code) to a .csv, .csv.gz, .parquet or .jsonl file.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from kubetune.data.demo import DEFAULT_ROWS, DEFAULT_SEED

    parser.add_argument("output", metavar="OUT", help="File to write; its name decides the format.")
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS, help=f"Ledger lines (default: {DEFAULT_ROWS}).")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"Same seed, same data (default: {DEFAULT_SEED}).")


def run(args: argparse.Namespace) -> int:
    from kubetune.data.demo import write_demo_data
    from kubetune.storage import LOCAL, check_location, check_output_location

    check_location("OUT", args.output, [LOCAL], why="demo-data writes a local file")
    check_output_location("OUT", args.output, file=True)
    if is_main_process():
        path = write_demo_data(args.output, args.rows, args.seed)
        print_main(f"wrote {args.rows:,} demo ledger lines (seed {args.seed}) to {path}")
    return 0
