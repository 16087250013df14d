from __future__ import annotations

import argparse
import sys
import textwrap

from kubetune.commands import add_config_arguments

HELP = ("Start one run of the pipeline (training, or with --pipeline predict batch scoring) on a Kubeflow Pipelines "
        "server; print its id, its URL and how to follow it.")

EPILOG = textwrap.dedent("""\
    The config is validated here first: a bad config, or data, outputs or an MLflow store that the
    cluster's pods can't reach, stops with one line per problem (exit 2) and nothing is sent.
    Training runs in a PyTorchJob (cluster.launcher=pytorchjob) unless the config or the command line
    says cluster.launcher=trainjob (a Kubeflow Trainer v2 TrainJob); `kubetune job` prints that job.

    The server: --host, else $KFP_HOST, else $KF_PIPELINES_ENDPOINT. A bearer token, when the server
    needs one, comes from $KF_PIPELINES_TOKEN (or KFP's $KF_PIPELINES_SA_TOKEN_PATH inside a cluster);
    the UI address from $KF_PIPELINES_UI_ENDPOINT when it differs from the API's.

    examples:
      kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8080:80 &
      kubetune submit --config configs/qwen2.5-0.5b-lora-zero2.yaml --host http://localhost:8080 \\
          data.uri=s3://ledgers/lines.parquet storage.runs_uri=s3://kubetune-runs
      KFP_HOST=https://kubeflow.example.com/pipeline KF_PIPELINES_TOKEN=$(kubectl create token kubetune -n team-a) \\
          kubetune submit -c run.yaml --namespace team-a --experiment ledger-codes training.epochs=1 --wait
      kubetune submit -c run.yaml --pipeline predict --model models:/ledger-codes@champion \\
          --data s3://ledgers/2025-07.parquet --output 's3://ledgers/predictions/{run_id}.parquet'

    exit status: 0 when the run was created (with --wait: when it succeeded), 1 when a waited-for run
    failed or was cancelled, 2 on a bad config or option, or when the server refused the run.
    """)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    add_config_arguments(parser, required=True)
    add_pipeline_arguments(parser)
    add_server_arguments(parser)
    parser.add_argument("--run-name", metavar="NAME", help="Display name of the run; default: the config's name and the time.")
    parser.add_argument("--no-cache", action="store_true",
                        help="Run every step again, even where KFP's cache holds a result for the same inputs.")
    parser.add_argument("--wait", action="store_true",
                        help="Follow the run until it ends, printing each state change; exit 1 if it fails.")


def add_pipeline_arguments(parser: argparse.ArgumentParser) -> None:
    """The options `submit` and `schedule` share: which pipeline, and what the batch-scoring one scores."""
    parser.add_argument("--pipeline", choices=("train", "predict"), default="train",
                        help="`train`: the training pipeline (default); `predict`: the batch-scoring pipeline, which "
                        "scores --data with --model.")
    parser.add_argument("--model", metavar="MODEL",
                        help="With --pipeline predict: a train output's model/ folder in object storage, or "
                        "models:/<name>@<alias> (e.g. @champion) or models:/<name>/<version> in the MLflow registry "
                        "of tracking.tracking_uri.")
    parser.add_argument("--data", metavar="URI",
                        help="With --pipeline predict: the rows to score (s3:// CSV, Parquet, JSON Lines or saved "
                        "dataset), with the training data's columns.")
    parser.add_argument("--output", metavar="URI",
                        help="With --pipeline predict: also write the predictions Parquet here (s3://; {run_id} "
                        "becomes the run id); default: only the run's predictions artifact.")


def cluster_config(args: argparse.Namespace):
    """The checked config and notes of the run `args` ask for, and what it scores (None: a training run)."""
    from kubetune.pipeline import remote

    scoring = remote.batch_scoring(args.pipeline, args.model, args.data, args.output)
    if scoring is None:
        return (*remote.cluster_run_config(args.config, args.overrides, args.namespace), None)
    return (*remote.cluster_predict_config(args.config, args.overrides, args.namespace, scoring), scoring)


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """The options `submit` and `schedule` share: where the run goes."""
    parser.add_argument("--host", metavar="URL",
                        help="KFP API server, e.g. http://localhost:8080; default: $KFP_HOST, then $KF_PIPELINES_ENDPOINT.")
    parser.add_argument("--namespace", "-n", metavar="NS",
                        help="Kubernetes namespace of the run and its training job (your profile namespace on a "
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

    config, notes, scoring = cluster_config(args)
    host = remote.resolve_host(args.host)
    print_notes(notes)
    server = remote.connect(host, config.cluster.namespace)
    submitted = remote.submit(
        server, config, run_name=args.run_name or remote.default_run_name(args.config, scoring),
        experiment=args.experiment, enable_caching=False if args.no_cache else None, scoring=scoring,
    )
    print_main(f"Submitted run {submitted.run_id} ({submitted.run_name}) to experiment '{submitted.experiment}'.")
    print_main(f"  KFP UI        {submitted.url}")
    if scoring is not None and scoring.output_uri:
        print_main(f"  predictions   {scoring.output_uri.replace('{run_id}', submitted.run_id)}")
    for what, command in remote.follow_commands(server, config, submitted.run_id, scoring):
        print_main(f"  {what:<13} {command}")
    if not args.wait:
        return 0
    final = remote.watch_run(server, submitted.run_id)
    print_main("\n" + remote.status_report(server, final))
    return 0 if final.succeeded else 1
