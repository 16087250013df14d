from __future__ import annotations

import argparse

from kubetune.commands import add_config_arguments, config_from_args

HELP = ("Classify new rows with a trained model: the predicted label, its probability, the top-k labels and a "
        "needs_review flag per row, written to a Parquet file.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--model", required=True, metavar="MODEL",
                        help="A train output's model/ folder (local or s3://), or a registered model: "
                        "models:/<name>@<alias> or models:/<name>/<version> (MLflow registry of tracking.tracking_uri).")
    parser.add_argument("--data", required=True, metavar="NEW",
                        help="Rows to classify, with the training data's columns (the label column may be absent; when "
                        "present, accuracy and macro F1 are reported): CSV, Parquet, JSON Lines or a saved dataset, "
                        "local or s3://.")
    parser.add_argument("--output", "-o", required=True, metavar="OUT",
                        help="Parquet file of predictions (local or s3://); an existing file is replaced only when "
                        "`kubetune predict` wrote it.")


def run(args: argparse.Namespace) -> int:
    from kubetune import storage
    from kubetune.console import print_table
    from kubetune.data.load import check_exists
    from kubetune.inference import check_predictions_output, predict_file

    config = config_from_args(args)
    # Every argument before the model: the output first (nothing is read or written when it is wrong).
    check_predictions_output(args.output, config.storage)
    storage.check_location("--data", args.data)
    check_exists(args.data, "--data", config.storage)
    summary = predict_file(args.model, args.data, args.output, config)
    print()
    for line in summary.lines():
        print(line)
    print_table(["predicted label", "rows", "share"],
                [(label, n, f"{100 * share:.1f}%") for label, n, share in summary.top_labels()],
                title="most predicted labels")
    return 0
