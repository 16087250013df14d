from __future__ import annotations

import argparse
import json
import sys
import textwrap

from kubetune.commands import add_config_arguments

HELP = ("Print the training job (a Kubeflow Trainer v2 TrainJob, or a Training Operator v1 PyTorchJob) that the "
        "train step would create, as YAML or JSON that `kubectl apply -f -` accepts; nothing is submitted.")

EPILOG = textwrap.dedent("""\
    The job is the one the pipeline's train step builds and submits (the `trainjob` or `pytorchjob`
    launcher): the same name, labels, command, resources and pod settings. Credentials appear only as
    references to the Secrets named by cluster.storage_secret and cluster.mlflow_secret, never as values.

    The trainer reads its config from <output>/launch-config.yaml: --upload-config writes it there
    (what the train step does before it submits), so that the printed job can be applied as it is.

    examples:
      kubetune job -c configs/qwen2.5-0.5b-lora-zero2.yaml --launcher trainjob \\
          --data s3://kubetune/runs/r1/tokenize --run-id r1 storage.runs_uri=s3://kubetune/runs
      kubetune job -c run.yaml --launcher trainjob --data s3://kubetune/tok --run-id r2 --upload-config \\
          | kubectl apply -f -
      kubetune job -c run.yaml --launcher pytorchjob --data s3://kubetune/tok -o json | jq .spec

    exit status: 0, or 2 on a bad config or option (one line per problem, nothing printed on stdout).
    """)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    add_config_arguments(parser, required=True)
    parser.add_argument("--launcher", choices=("trainjob", "pytorchjob"),
                        help="The kind of job: `trainjob` (Kubeflow Trainer v2.3.0) or `pytorchjob` (Training "
                        "Operator v1); default: cluster.launcher of the config.")
    parser.add_argument("--data", metavar="URI", required=True,
                        help="The tokenized dataset (the tokenize step's output) in object storage, s3:// or minio://.")
    parser.add_argument("--run-id", metavar="ID", default="manual",
                        help="Names the job, labels it (kubetune.io/run-id) and its output "
                        "<storage.runs_uri>/<ID>/train; default: manual.")
    parser.add_argument("--mlflow-run-id", metavar="ID", help="An MLflow run the trainer logs into; default: its own.")
    parser.add_argument("--output", "-o", choices=("yaml", "json"), default="yaml", help="Output format; default: yaml.")
    parser.add_argument("--upload-config", action="store_true",
                        help="Also write the resolved config to <output>/launch-config.yaml, where the job's trainer reads it.")


def build_job(args: argparse.Namespace):
    """(the job `args` ask for as the API server would receive it, the URI of its launch config, the request)."""
    from kubetune.commands import config_from_args
    from kubetune.errors import ConfigError
    from kubetune.launchers import TrainRequest, get_launcher, launch_config_uri
    from kubetune.pipeline.steps import train_output_uri

    config = config_from_args(args)
    launcher = args.launcher or config.cluster.launcher
    if launcher not in ("trainjob", "pytorchjob"):
        raise ConfigError([
            f"cluster.launcher: {launcher} runs no cluster job; pass --launcher trainjob (Kubeflow Trainer v2) "
            "or --launcher pytorchjob (Training Operator v1)"
        ], str(args.config))
    config.cluster.launcher = launcher
    request = TrainRequest(config=config, data_uri=args.data, output_uri=train_output_uri(config, args.run_id),
                           run_id=args.run_id, mlflow_run_id=args.mlflow_run_id)
    job = get_launcher(launcher).build(request)  # validated as the train step validates it
    return job, launch_config_uri(request.output_uri), request


def run(args: argparse.Namespace) -> int:
    import yaml

    from kubetune.launchers import write_run_config

    job, config_uri, request = build_job(args)
    text = json.dumps(job, indent=2) + "\n" if args.output == "json" else yaml.safe_dump(job, sort_keys=False)
    if args.upload_config:
        write_run_config(request)
        print(f"kubetune: wrote {config_uri}", file=sys.stderr)
    else:
        print(f"kubetune: note: the job's trainer reads {config_uri}; --upload-config writes it", file=sys.stderr)
    sys.stdout.write(text)
    return 0
