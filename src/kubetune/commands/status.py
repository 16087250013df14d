from __future__ import annotations

import argparse
import textwrap

HELP = "Show a pipeline run on a Kubeflow Pipelines server: its state, each step's state and duration, its MLflow run and its training job (PyTorchJob or TrainJob: state and progress, when the kubeconfig reaches the cluster)."

EPILOG = textwrap.dedent("""\
    The server: --host, else $KFP_HOST, else $KF_PIPELINES_ENDPOINT; a token from $KF_PIPELINES_TOKEN.
    The MLflow link is looked up on the run's tracking server (tag kubetune.run_id=<run id>); when the
    server can't be reached from here, the tag to search for is shown instead.

    examples:
      kubetune status 6f1c2a0e-8d4b-4c1a-9a57-3e1b2f0c9d11 --host http://localhost:8080
      kubetune status 6f1c2a0e-8d4b-4c1a-9a57-3e1b2f0c9d11 --watch && echo trained

    exit status: 0, or with --watch 0 when the run succeeded and 1 when it failed or was cancelled;
    2 when the run or the server can't be found.
    """)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("run_id", metavar="RUN_ID", help="The KFP run id that `kubetune submit` printed.")
    parser.add_argument("--host", metavar="URL",
                        help="KFP API server, e.g. http://localhost:8080; default: $KFP_HOST, then $KF_PIPELINES_ENDPOINT.")
    parser.add_argument("--watch", "-w", action="store_true",
                        help="Follow the run until it ends, printing each state change, then its status.")


def run(args: argparse.Namespace) -> int:
    from kubetune.distributed import print_main
    from kubetune.pipeline import remote

    server = remote.connect(remote.resolve_host(args.host))
    if not args.watch:
        print_main(remote.status_report(server, remote.run_status(server, args.run_id)))
        return 0
    final = remote.watch_run(server, args.run_id)
    print_main("\n" + remote.status_report(server, final))
    return 0 if final.succeeded else 1
