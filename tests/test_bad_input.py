"""Bad input stops a command before it does any work: exit 2, exactly one line `kubetune: error: ...`
naming the key, option or file and what to do, no traceback, nothing written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kubetune.cli import main


def one_line_error(capsys: pytest.CaptureFixture, *argv: str, logged: bool = False) -> str:
    """The one error line; `logged`: the command got far enough to log progress (stderr too) first."""
    code = main(list(argv))
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    [line] = [line for line in err.splitlines() if line.startswith("kubetune:")] if logged else err.splitlines()
    assert line.startswith("kubetune: error: ")
    return line.removeprefix("kubetune: error: ")


# ------------------------------------------------------------------------------ URI schemes, per key
@pytest.mark.parametrize("key", ["data.uri", "data.validation_uri", "data.test_uri", "model.name",
                                 "tokenize.model_name", "storage.runs_uri"])
@pytest.mark.parametrize("scheme", ["gs", "http", "hdfs"])
def test_a_scheme_kubetune_cannot_read_is_an_error_naming_the_key(capsys, key: str, scheme: str):
    uri = f"{scheme}://bucket/thing"
    error = one_line_error(capsys, "validate", "-q", f"{key}={uri}")
    assert error == (f"{key}: kubetune cannot read or write {scheme}:// URIs (got {uri!r}); give a local path or an "
                     f"s3:// (minio://) URI" + (", demo://" if key.startswith("data.") else ""))


def test_demo_and_object_storage_and_local_locations_are_accepted(capsys):
    assert main(["validate", "-q", "data.uri=demo://ledger", "model.name=s3://models/bert",
                 "storage.runs_uri=minio://bucket/runs", "data.test_uri=file:///data/test.csv"]) == 0


def test_run_into_object_storage_is_an_error_and_writes_no_local_folder(capsys, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    error = one_line_error(capsys, "run", "storage.runs_uri=s3://bucket/runs")
    assert error == ("storage.runs_uri: 's3://bucket/runs' is object storage; `kubetune run` keeps its outputs, "
                     "MLflow store and step cache in a local folder: give a local path")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("argv", "option"), [
    (["preprocess", "--output", "gs://b/pre"], "--output"),
    (["tokenize", "--input", "hdfs://n/pre", "--output", "OUT"], "--input"),
    (["train", "--config", "CONFIG", "--data", "http://h/tok", "--output", "OUT"], "--data"),
    (["evaluate", "--model", "gs://b/model", "--data", "DATA", "--output", "OUT"], "--model"),
])
def test_a_path_argument_with_an_unknown_scheme_is_an_error_naming_the_option(capsys, tmp_path: Path, argv, option):
    (tmp_path / "run.yaml").write_text("training:\n  epochs: 1\n")
    places = {"OUT": str(tmp_path / "out"), "DATA": str(tmp_path), "CONFIG": str(tmp_path / "run.yaml")}
    error = one_line_error(capsys, *[places.get(a, a) for a in argv])
    assert error.startswith(f"{option}: kubetune cannot read or write ")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------- outputs
@pytest.fixture
def a_file(tmp_path: Path) -> Path:
    path = tmp_path / "notes.txt"
    path.write_text("mine")
    return path


@pytest.mark.parametrize("command", [
    ["preprocess", "data.uri=demo://ledger?rows=50"],
    ["tokenize", "--input", "INPUT"],
    ["train", "--config", "CONFIG", "--data", "INPUT"],
    ["evaluate", "--model", "INPUT", "--data", "INPUT"],
])
def test_an_output_under_a_file_is_an_error_before_any_work(capsys, tmp_path: Path, a_file: Path, command):
    (tmp_path / "run.yaml").write_text("training:\n  epochs: 1\n")
    places = {"INPUT": str(tmp_path), "CONFIG": str(tmp_path / "run.yaml")}
    argv = [places.get(a, a) for a in command]
    error = one_line_error(capsys, *argv, "--output", str(a_file / "out"))
    assert error == f"--output: {a_file} is a file, so {a_file / 'out'} cannot be created in it; choose another path"
    assert a_file.read_text() == "mine"


def test_runs_under_a_file_is_an_error_before_the_pipeline_starts(capsys, a_file: Path):
    error = one_line_error(capsys, "run", f"storage.runs_uri={a_file / 'runs'}")
    assert error == (f"storage.runs_uri: {a_file} is a file, so {a_file / 'runs'} cannot be created in it; "
                     "choose another path")


@pytest.mark.parametrize(("command", "kind"), [
    (["preprocess", "data.uri=NOWHERE/ledger.csv"], "preprocess"),
    (["tokenize", "--input", "NOWHERE"], "tokenize"),
    (["evaluate", "--model", "NOWHERE", "--data", "NOWHERE"], "evaluate"),
])
def test_an_output_folder_of_the_users_is_refused_before_any_work(capsys, tmp_path: Path, command, kind: str):
    """Inputs that don't exist: were the output checked only when publishing, they would be the error."""
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    argv = [a.replace("NOWHERE", str(tmp_path / "nowhere")) for a in command]
    error = one_line_error(capsys, *argv, "--output", str(tmp_path / "out"))
    assert error == f"output {tmp_path / 'out'} exists and is not a kubetune {kind} output; choose another path"
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["notes.txt"]


def test_an_output_that_is_a_file_is_an_error(capsys, a_file: Path):
    error = one_line_error(capsys, "preprocess", "--output", str(a_file), "data.uri=demo://ledger?rows=50")
    assert error == f"--output: {a_file} is a file; give a folder"
    assert a_file.read_text() == "mine"


def test_an_output_in_a_folder_nobody_can_write_is_an_error(capsys):
    # /sys refuses new entries even to root, for whom a chmod-ed folder would still be writable.
    error = one_line_error(capsys, "preprocess", "--output", "/sys/kubetune-out", "data.uri=demo://ledger?rows=50")
    assert error == "--output: cannot write into /sys (Operation not permitted); choose a folder you can write to"


@pytest.mark.parametrize(("name", "message"), [
    ("FILE/ledger.csv", "OUT: FILE is a file, so FILE/ledger.csv cannot be created in it; choose another path"),
    ("DIR", "OUT: DIR is a folder; give a file name"),
    ("DIR/ledger.txt", "cannot tell the format of 'ledger.txt' from its name; end it in .csv, .csv.gz, .parquet or .jsonl"),
    ("s3://bucket/ledger.csv", "OUT: 's3://bucket/ledger.csv' is object storage; demo-data writes a local file: give a local path"),
])
def test_demo_data_output_problems(capsys, tmp_path: Path, a_file: Path, name: str, message: str):
    def place(text: str) -> str:
        return text.replace("FILE", str(a_file)).replace("DIR", str(tmp_path))

    assert one_line_error(capsys, "demo-data", place(name), "--rows", "10") == place(message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


# ---------------------------------------------------------------------------------------- --config
def test_config_that_is_a_folder(capsys, tmp_path: Path):
    assert one_line_error(capsys, "validate", "--config", str(tmp_path)) == (
        f"config file {tmp_path} is a folder; give the YAML file in it")


def test_config_that_is_not_utf8(capsys, tmp_path: Path):
    path = tmp_path / "run.yaml"
    path.write_bytes(b"training:\n  epochs: 1\n# caf\xe9\n")
    assert one_line_error(capsys, "validate", "--config", str(path)) == (
        f"config file {path} is not UTF-8 text (line 3); save it as UTF-8")


@pytest.mark.parametrize("command", ["validate", "preprocess", "tokenize", "train", "evaluate", "run", "submit",
                                     "schedule"])
def test_a_lone_yaml_argument_is_the_config(command: str, tmp_path: Path):
    from kubetune.cli import build_parser
    from kubetune.commands import resolve_config_argument

    required = {"train": ["--data", "D", "--output", "O"], "evaluate": ["--model", "M", "--data", "D", "--output", "O"],
                "schedule": ["--every", "1d"]}
    args = build_parser().parse_args([command, *required.get(command, []), "my.yaml", "training.epochs=2"])
    resolve_config_argument(args)
    assert (args.config, args.overrides) == ("my.yaml", ["training.epochs=2"])


def test_validate_my_yaml_validates_it(capsys, tmp_path: Path):
    path = tmp_path / "my.yaml"
    path.write_text("training:\n  epochs: 7\n")
    assert main(["validate", str(path), "lora.r=4"]) == 0
    out = capsys.readouterr().out
    assert "  epochs: 7.0\n" in out and "  r: 4\n" in out


def test_a_yaml_argument_after_an_override_says_did_you_mean(capsys):
    assert one_line_error(capsys, "validate", "training.epochs=2", "my.yaml") == (
        "command line: override 'my.yaml' is not of the form key.sub=value; did you mean --config my.yaml?")


def test_train_without_a_config_says_it_is_required(capsys):
    assert one_line_error(capsys, "train", "--data", "D", "--output", "O") == (
        "--config is required: give the run config, e.g. `kubetune train --config run.yaml`")


def test_the_installed_command_prints_one_line(tmp_path: Path):
    """The same through a real process: nothing but the one line on stderr."""
    result = subprocess.run([sys.executable, "-m", "kubetune", "validate", "-c", str(tmp_path)], capture_output=True,
                            text=True, timeout=120)
    assert (result.returncode, result.stderr) == (2, f"kubetune: error: config file {tmp_path} is a folder; "
                                                     "give the YAML file in it\n")


def test_an_existing_path_given_as_an_override_says_did_you_mean(capsys, tmp_path: Path):
    assert one_line_error(capsys, "validate", str(tmp_path)) == (
        f"command line: override '{tmp_path}' is not of the form key.sub=value; did you mean --config {tmp_path}?")


# --------------------------------------------------------------- library messages, shortened
def test_short_reason_keeps_the_type_and_the_first_line():
    from kubetune.errors import short_reason

    assert short_reason(ValueError("first line of a long message\n" + "details " * 100)) == (
        "ValueError: first line of a long message")
    assert short_reason(ValueError("x" * 500), limit=20) == "ValueError: " + "x" * 19 + "…"
    assert short_reason(KeyError()) == "KeyError"


def test_an_unreadable_parquet_file_is_one_short_line(capsys, tmp_path: Path):
    data = tmp_path / "ledger.parquet"
    data.write_bytes(b"PAR1 this is not parquet at all" * 10)
    error = one_line_error(capsys, "preprocess", "--output", str(tmp_path / "out"), f"data.uri={data}", logged=True)
    assert error.startswith(f"data.uri: cannot read {data} as parquet (ArrowInvalid: ")
    assert error.endswith("); check the file or set data.format")
    assert len(error) < 400
    assert not (tmp_path / "out").exists()


def test_a_huge_wrong_value_is_cut_in_the_message(capsys):
    error = one_line_error(capsys, "validate", "training.batch_size=" + "9" * 300 + "x")
    assert error.startswith("training.batch_size: Input should be a valid integer, unable to parse string as an "
                            "integer (got '999")
    assert error.endswith("…)") and len(error) < 200


def test_broken_deepspeed_json_names_line_and_column(capsys, tmp_path: Path):
    (tmp_path / "ds.json").write_text('{"zero_optimization": {"stage": 2,}}')
    error = one_line_error(capsys, "validate", "deepspeed.enable=true", f"deepspeed.config_path={tmp_path / 'ds.json'}")
    assert error == (f"deepspeed.config_path: {tmp_path / 'ds.json'} is not valid JSON (Expecting property name enclosed "
                     "in double quotes at line 1, column 35)")


# -------------------------------------------------------------------- data present but useless
def ledger_csv(tmp_path: Path, rows: int = 60, **columns) -> Path:
    import pandas as pd

    frame = pd.DataFrame({
        "memo": [""] * rows,
        "note": [None] * rows,
        "supplier": [f"supplier {i % 7}" for i in range(rows)],
        "code": [f"C{i % 3}" for i in range(rows)],
        **columns,
    })
    path = tmp_path / "ledger.csv"
    frame.to_csv(path, index=False)
    return path


def test_text_columns_empty_in_every_row_are_an_error(capsys, tmp_path: Path):
    data = ledger_csv(tmp_path)
    error = one_line_error(capsys, "preprocess", "--output", str(tmp_path / "out"), f"data.uri={data}",
                           "split.label_column=code", "serialize.text_columns=[memo, note]", logged=True)
    assert error == ("serialize.text_columns: all 42 rows of the train split serialize to an empty text (no value in "
                     "memo, note); the model would see nothing: choose columns that hold text")
    assert not (tmp_path / "out").exists()


def test_a_separate_split_whose_text_is_empty_in_every_row_is_an_error(capsys, tmp_path: Path):
    import pandas as pd

    data = ledger_csv(tmp_path, memo=["paper"] * 60)
    test = tmp_path / "test.csv"
    pd.DataFrame({"memo": [" "] * 5, "note": [None] * 5, "supplier": ["x"] * 5, "code": ["C1"] * 5}).to_csv(test, index=False)
    error = one_line_error(capsys, "preprocess", "--output", str(tmp_path / "out"), f"data.uri={data}",
                           f"data.test_uri={test}", "split.label_column=code", "serialize.text_columns=[memo]",
                           logged=True)
    assert error.startswith("serialize.text_columns: all 5 rows of the test split serialize to an empty text")


def test_some_rows_with_empty_text_are_only_a_warning(tmp_path: Path):
    from kubetune.config import load_config
    from kubetune.data.stages import preprocess

    data = ledger_csv(tmp_path, memo=["paper" if i % 2 else "" for i in range(60)])
    preprocess(load_config(None, [f"data.uri={data}", "split.label_column=code", "serialize.text_columns=[memo]"]),
               str(tmp_path / "out"))
    assert (tmp_path / "out" / "_COMPLETE").exists()
