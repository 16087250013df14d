"""CLI subcommands: each module has HELP, add_arguments(parser) and run(args) -> int."""

from __future__ import annotations

import argparse

from kubetune.config import YAML_SUFFIXES, RunConfig, load_config
from kubetune.errors import KubetuneError


def add_config_arguments(parser: argparse.ArgumentParser, required: bool = False) -> None:
    """--config FILE plus trailing key.sub=value overrides, validated like the file.

    A lone first positional that is a YAML file is taken as the config (`kubetune validate my.yaml`):
    see `resolve_config_argument`, which the CLI runs for every command (and which enforces `required`:
    argparse can't, or `kubetune train my.yaml` would be refused before the file is seen).
    """
    parser.add_argument(
        "--config", "-c", metavar="FILE",
        help="Run config (YAML); the first positional argument may name it instead."
        + (" Required." if required else " Unset: the schema defaults."),
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE",
        help="Override config keys, e.g. training.epochs=1 lora.r=8 (values are read as YAML).",
    )
    parser.set_defaults(_config_required=required)


def resolve_config_argument(args: argparse.Namespace) -> None:
    """`kubetune CMD my.yaml k=v` means `kubetune CMD --config my.yaml k=v` (what users type first)."""
    overrides = getattr(args, "overrides", None)
    if overrides is None:
        return
    if args.config is None and overrides and "=" not in overrides[0] and overrides[0].lower().endswith(YAML_SUFFIXES):
        args.config, args.overrides = overrides[0], overrides[1:]
    if args.config is None and getattr(args, "_config_required", False):
        raise KubetuneError(f"--config is required: give the run config, e.g. `kubetune {args.command} --config run.yaml`")


def config_from_args(args: argparse.Namespace) -> RunConfig:
    return load_config(args.config, args.overrides)


def check_locations(args: argparse.Namespace, config: RunConfig, inputs: tuple[str, ...] = (),
                    outputs: tuple[str, ...] = (), kind: str | None = None) -> None:
    """Every path argument of a command, checked before its work starts (one line naming the option, exit 2):
    the scheme, object storage reachable, outputs writable and (`kind`: a stage output that
    storage.atomic_output_dir publishes) not a folder of the user's."""
    from kubetune import storage

    for name in inputs:
        storage.check_location(f"--{name}", getattr(args, name))
        if storage.is_remote(getattr(args, name)):
            storage.check_reachable(getattr(args, name), config.storage)
    for name in outputs:
        storage.check_output_location(f"--{name}", getattr(args, name), config=config.storage)
        if kind is not None:
            storage.check_replaceable(getattr(args, name), kind, config.storage)
