from __future__ import annotations

import argparse
import sys
import textwrap

from kubetune.commands import add_config_arguments

HELP = "Start one run of the pipeline on a Kubeflow Pipelines server; print its id, its URL and how to follow it."

EPILOG = textwrap.dedent("""\
    The config is validated here first: a bad config, or data, outputs or an MLflow store that the
    cluster's pods can't reach, stops with one line per problem (exit 2) and nothing is sent.
    Training runs in a PyTorchJob (cluster.launcher=pytorchjob) unless the command line says otherwise.

    The server: --host, else $KFP_HOST, else $KF_PIPELINES_ENDPOINT. A bearer token, when the server
    needs one, comes from $KF_PIPELINES_TOKEN (or KFP's $KF_PIPELINES_SA_TOKEN_PATH inside a cluster);
    the UI address from $KF_PIPELINES_UI_ENDPOINT when it differs from the API's.

    examples:
      kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8080:80 &
      kubetune submit --config configs/qwen2.5-0.5b-lora-zero2.yaml --host http://localhost:8080 \\
          data.uri=s3://ledgers/lines.parquet storage.runs_uri=s3://kubetune-runs
      KFP_HOST=https://kubeflow.example.com/pipeline KF_PIPELINES_TOKEN=$(kubectl create token kubetune -n team-a) \\
          kubetune submit -c run.yaml --namespace team-a --experiment ledger-codes training.epochs=1 --wait

    exit status: 0 when the run was created (with --wait: when it succeeded), 1 when a waited-for run
    failed or was cancelled, 2 on a bad config or option, or when the server refused the run.
    """)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    add_config_arguments(parser, required=True)
    add_server_arguments(parser)
    parser.add_argument("--run-name", metavar="NAME", help="Display name of the run; default: the config's name and the time.")
    parser.add_argument("--no-cache", action="store_true",
                        help="Run every step again, even where KFP's cache holds a result for the same inputs.")
    parser.add_argument("--wait", action="store_true",
                        help="Follow the run until it ends, printing each state change; exit 1 if it fails.")


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """The options `submit` and `schedule` share: where the run goes."""
    parser.add_argument("--host", metavar="URL",
                        help="KFP API server, e.g. http://localhost:8080; default: $KFP_HOST, then $KF_PIPELINES_ENDPOINT.")
    parser.add_argument("--namespace", "-n", metavar="NS",
                        help="Kubernetes namespace of the run and its PyTorchJob (your profile namespace on a "
                        "multi-user Kubeflow); default: cluster.namespace of the config.")
    parser.add_argument("--experiment", metavar="NAME",
                        help="KFP experiment (created when missing); default: cluster.experiment, then "
                        "tracking.experiment_name.")


def print_notes(notes: list[str]) -> None:
    from kubetune.distributed import print_main

    for note in notes:
        print_main(f"kubetune: note: {note}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from kubetune.distributed import print_main
    from kubetune.pipeline import remote

    config, notes = remote.cluster_run_config(args.config, args.overrides, args.namespace)
    host = remote.resolve_host(args.host)
    print_notes(notes)
    server = remote.connect(host, config.cluster.namespace)
    submitted = remote.submit(
        server, config, run_name=args.run_name or remote.default_run_name(args.config),
        experiment=args.experiment, enable_caching=False if args.no_cache else None,
    )
    print_main(f"Submitted run {submitted.run_id} ({submitted.run_name}) to experiment '{submitted.experiment}'.")
    print_main(f"  KFP UI        {submitted.url}")
    for what, command in remote.follow_commands(server, config, submitted.run_id):
        print_main(f"  {what:<13} {command}")
    if not args.wait:
        return 0
    final = remote.watch_run(server, submitted.run_id)
    print_main("\n" + remote.status_report(server, final))
    return 0 if final.succeeded else 1
