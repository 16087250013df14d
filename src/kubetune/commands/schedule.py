from __future__ import annotations

import argparse
import textwrap

from kubetune.commands import add_config_arguments
from kubetune.commands.submit import add_pipeline_arguments, add_server_arguments, cluster_config, print_notes

HELP = ("Create a recurring run of the pipeline (training, or with --pipeline predict batch scoring) on a Kubeflow "
        "Pipelines server (a cron expression or an interval).")

EPILOG = textwrap.dedent("""\
    The config is checked as by `kubetune submit` before anything is sent. Each run the schedule starts
    gets its own KFP run id, which names its outputs, its MLflow run and its PyTorchJob.

    --cron takes the usual 5 fields (minute hour day-of-month month day-of-week, Sunday = 0) or a
    shorthand (@hourly, @daily, @weekly, @monthly, @yearly); kubetune sends KFP's 6-field form with
    seconds first. KFP evaluates it in its scheduler's time zone (UTC unless the cluster sets
    CRON_SCHEDULE_TIMEZONE on ml-pipeline-scheduledworkflow). --every takes 30m, 12h, 1d, 1w, 1h30m...
    Catch-up is off: after a pause, only the latest missed run starts, not one per missed slot.

    examples:
      kubetune schedule -c configs/qwen2.5-0.5b-lora-zero2.yaml --cron '0 2 * * 1' --host http://localhost:8080
      kubetune schedule -c run.yaml --every 1d --start 2025-07-01T02:00:00Z --end 2025-12-31 --name nightly-retrain
      kubetune schedule -c run.yaml --cron @daily --max-concurrency 2 --catchup data.uri=s3://ledgers/latest.parquet
      kubetune schedule -c run.yaml --pipeline predict --cron '0 6 1 * *' --model models:/ledger-codes@champion \\
          --data s3://ledgers/new-lines.parquet --output 's3://ledgers/predictions/{run_id}.parquet'
    """)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    add_config_arguments(parser, required=True)
    add_pipeline_arguments(parser)
    when = parser.add_mutually_exclusive_group(required=True)
    when.add_argument("--cron", metavar="EXPR", help="When to start runs: a 5-field cron expression, e.g. '0 2 * * 1'.")
    when.add_argument("--every", metavar="DURATION", help="Start a run this often, e.g. 12h or 1d.")
    parser.add_argument("--max-concurrency", type=int, default=1, metavar="N",
                        help="Runs of this schedule at once, 1-10 (default: 1).")
    parser.add_argument("--catchup", action="store_true",
                        help="After a pause, start one run per missed slot (default: only the latest).")
    parser.add_argument("--name", metavar="NAME", help="Display name of the recurring run; default: the config's name "
                        "(with -predict for --pipeline predict).")
    parser.add_argument("--start", metavar="TIME", help="No run before this ISO 8601 time (no offset: local time).")
    parser.add_argument("--end", metavar="TIME", help="No run after this ISO 8601 time (no offset: local time).")
    add_server_arguments(parser)
    parser.add_argument("--no-cache", action="store_true",
                        help="Run every step each time, even where KFP's cache holds a result for the same inputs.")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from kubetune.distributed import print_main
    from kubetune.pipeline import remote

    config, notes, scoring = cluster_config(args)
    when = remote.make_schedule(cron=args.cron, every=args.every, max_concurrency=args.max_concurrency,
                                catchup=args.catchup, start=args.start, end=args.end)
    host = remote.resolve_host(args.host)
    print_notes(notes)
    server = remote.connect(host, config.cluster.namespace)
    default_name = Path(args.config).stem + ("-predict" if scoring is not None else "")
    scheduled = remote.schedule(
        server, config, when, name=args.name or default_name, experiment=args.experiment,
        enable_caching=False if args.no_cache else None, scoring=scoring,
    )
    print_main(f"Scheduled recurring run {scheduled.recurring_run_id} ({scheduled.name}) in experiment "
               f"'{scheduled.experiment}': {when.describe()}.")
    if when.start_time or when.end_time:
        print_main(f"  window        {when.start_time or 'now'} to {when.end_time or 'no end'}")
    print_main(f"  KFP UI        {scheduled.url}")
    if scoring is not None and scoring.output_uri:
        print_main(f"  predictions   {scoring.output_uri}")
    print_main(f"  its runs      {server.experiment_url(scheduled.experiment_id)}")
    return 0
