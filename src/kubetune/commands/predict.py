from __future__ import annotations

import argparse

from kubetune.commands import add_config_arguments, config_from_args
from kubetune.errors import KubetuneError

HELP = ("Classify new rows with a trained model: the predicted label, its probability, the top-k labels and a "
        "needs_review flag per row, written to a Parquet file; with task: sft, a generated completion per row.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--model", required=True, metavar="MODEL",
                        help="A train output's model/ folder (local or s3://), or a registered model: "
                        "models:/<name>@<alias> or models:/<name>/<version> (MLflow registry of tracking.tracking_uri).")
    parser.add_argument("--data", required=True, metavar="NEW",
                        help="Rows to classify, with the training data's columns (the label column may be absent; when "
                        "present, accuracy and macro F1 are reported): CSV, Parquet, JSON Lines or a saved dataset, "
                        "local or s3://; or demo://ledger?rows=N&seed=S.")
    parser.add_argument("--output", "-o", required=True, metavar="OUT",
                        help="Parquet file of predictions (local or s3://); an existing file is replaced only when "
                        "`kubetune predict` wrote it.")


def quiet_libraries() -> None:
    """Only the libraries' errors reach a `kubetune predict` user, who gets kubetune's own progress bar and summary.

    What they say while a trained model loads is noise here, some of it misleading: transformers reports the
    classification head as "MISSING ... newly initialized" because the base checkpoint has none, and the trained
    head is put in place from the adapter right after; MLflow draws a bar per downloaded file."""
    import logging
    import os
    import warnings

    import transformers

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()  # "Loading weights": predict draws its own bar
    warnings.filterwarnings("ignore", category=FutureWarning)


def run(args: argparse.Namespace) -> int:
    quiet_libraries()  # first: importing kubetune.inference already makes MLflow speak
    from kubetune import storage
    from kubetune.console import print_table
    from kubetune.data.load import check_exists
    from kubetune.inference import check_predictions_output, predict_file

    config = config_from_args(args)
    # Every argument before the model: the output first (nothing is read or written when it is wrong).
    check_predictions_output(args.output, config.storage)
    problem = storage.unsupported_scheme(args.data, also=("demo",))  # demo://ledger?rows=500&seed=7: new demo lines
    if problem:
        raise KubetuneError(f"--data: {problem}")
    check_exists(args.data, "--data", config.storage)
    if config.task == "sft":
        from kubetune.generation import generate_file

        result = generate_file(args.model, args.data, args.output, config)
        print_table(["summary", "value"], list(result.items()), title=f"completions → {args.output}")
        return 0
    summary = predict_file(args.model, args.data, args.output, config)
    print()
    for line in summary.lines():
        print(line)
    print_table(["predicted label", "rows", "share"],
                [(label, n, f"{100 * share:.1f}%") for label, n, share in summary.top_labels()],
                title="most predicted labels")
    return 0
