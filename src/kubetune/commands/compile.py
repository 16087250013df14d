from __future__ import annotations

import argparse

HELP = ("Write the compiled pipelines (pipelines/kubetune.yaml: training; pipelines/kubetune-predict.yaml: batch "
        "scoring) and components (components/*.yaml) for Kubeflow.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", metavar="FILE",
                        help="Take the Kubernetes settings (secrets, tolerations, node selector) from this config's "
                        "`cluster` section; default: the schema defaults.")
    parser.add_argument("--output-dir", "-o", default=".", help="Folder that gets pipelines/ and components/ (default: .).")


def run(args: argparse.Namespace) -> int:
    from kubetune.config import load_config
    from kubetune.pipeline.compile import compile_all

    cluster = load_config(args.config).cluster if args.config else None
    for path in compile_all(args.output_dir, cluster):
        print(path)
    return 0
