from __future__ import annotations

import argparse

from kubetune.commands import add_config_arguments, check_locations, config_from_args

HELP = ("Score a trained model on the test split beside a TF-IDF baseline: metrics, confusion matrix, per-class "
        "table and an HTML report.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--model", required=True, help="The trainer's model folder (TRAINED/model), local or s3://.")
    parser.add_argument("--data", required=True, help="The tokenize stage's output, local or s3://.")
    parser.add_argument("--output", required=True, help="Folder for metrics.json, report.html, ... (local or s3://).")
    parser.add_argument("--split", default="test", help="Split to score (default: test).")
    parser.add_argument("--mlflow-run-id", help="Also log the metrics, the report and the model (as the run's MLflow model) into this MLflow run.")


def run(args: argparse.Namespace) -> int:
    from kubetune.console import print_table
    from kubetune.evaluation import evaluate
    from kubetune.evaluation.baseline import comparison_lines

    config = config_from_args(args)
    check_locations(args, config, inputs=("model", "data"), outputs=("output",), kind="evaluate")
    result = evaluate(config, model_uri=args.model, data_uri=args.data, output_uri=args.output,
                      mlflow_run_id=args.mlflow_run_id, split=args.split)
    if result.baseline_metrics:
        table, *said = comparison_lines(dict(sorted(result.metrics.items())), result.baseline_metrics,
                                        title=f"{args.split} metrics")
        print("\n" + table + "\n")
        for line in said:
            print(line)
    else:
        print_table(["metric", "value"], sorted(result.metrics.items()), title=f"{args.split} metrics")
    print(f"report: {result.report_path}")
    return 0
