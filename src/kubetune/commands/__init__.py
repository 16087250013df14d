"""CLI subcommands: each module has HELP, add_arguments(parser) and run(args) -> int."""

from __future__ import annotations

import argparse

from kubetune.config import RunConfig, load_config


def add_config_arguments(parser: argparse.ArgumentParser, required: bool = False) -> None:
    """--config FILE plus trailing key.sub=value overrides, validated like the file."""
    parser.add_argument(
        "--config", "-c", metavar="FILE", required=required,
        help="Run config (YAML)." + ("" if required else " Unset: the schema defaults."),
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE",
        help="Override config keys, e.g. training.epochs=1 lora.r=8 (values are read as YAML).",
    )


def config_from_args(args: argparse.Namespace) -> RunConfig:
    return load_config(args.config, args.overrides)
