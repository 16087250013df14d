"""`kubetune schedule`: the recurring run it creates, and the schedules it refuses before sending anything."""

from __future__ import annotations

import datetime as dt

import pytest

from kubetune.config import config_from_yaml_text, load_config
from kubetune.errors import KubetuneError
from kubetune.pipeline import remote
from tests.remote.test_submit import kubetune

RECURRING = "/apis/v2beta1/recurringruns"


def sent_recurring_run(fake) -> dict:
    (request,) = fake.sent("POST", RECURRING)
    return request.json


def test_cron_schedule_is_sent_in_kfps_six_field_form(kfp_server, run_yaml, capsys):
    code, out, err = kubetune(capsys, "schedule", "-c", str(run_yaml), "--host", kfp_server.url,
                              "--cron", "0 2 * * 1", "--name", "weekly-retrain", "training.epochs=1")
    assert code == 0, err

    sent = sent_recurring_run(kfp_server)
    assert sent["trigger"] == {"cron_schedule": {"cron": "0 0 2 * * 1"}}
    assert sent["display_name"] == "weekly-retrain"
    assert sent["mode"] == "ENABLE"
    assert sent["max_concurrency"] == 1
    assert sent["no_catchup"] is True  # catch-up is off unless asked for
    assert sent["service_account"] == "ledger-trainer"
    assert config_from_yaml_text(sent["runtime_config"]["parameters"]["config"]) == load_config(run_yaml, ["training.epochs=1"])
    spec = sent["pipeline_spec"]["pipeline_spec"]
    assert set(spec["root"]["dag"]["tasks"]) == {"exit-handler-1", "finalize"}
    assert set(spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]) == {
        "validate", "preprocess", "tokenize", "train", "evaluate", "promote"}
    (experiment,) = kfp_server.experiments.values()
    assert sent["experiment_id"] == experiment["experiment_id"] and experiment["display_name"] == "ledger-codes"

    (recurring_id,) = kfp_server.recurring_runs
    assert out.splitlines() == [
        f"Scheduled recurring run {recurring_id} (weekly-retrain) in experiment 'ledger-codes': cron '0 0 2 * * 1', "
        "at most 1 at a time, catch-up off.",
        f"  KFP UI        {kfp_server.url}/#/recurringrun/details/{recurring_id}",
        f"  its runs      {kfp_server.url}/#/experiments/details/{experiment['experiment_id']}",
    ]


def test_interval_schedule_with_window_concurrency_and_catchup(kfp_server, run_yaml, capsys):
    code, _, err = kubetune(capsys, "schedule", "-c", str(run_yaml), "--host", kfp_server.url, "--every", "12h",
                            "--max-concurrency", "3", "--catchup", "--start", "2031-01-01T02:00:00+02:00",
                            "--end", "2031-12-31T00:00:00Z")
    assert code == 0, err

    sent = sent_recurring_run(kfp_server)
    assert sent["trigger"] == {"periodic_schedule": {
        "interval_second": 43200, "start_time": "2031-01-01T00:00:00Z", "end_time": "2031-12-31T00:00:00Z"}}
    assert sent["max_concurrency"] == 3
    assert sent["no_catchup"] is False
    assert sent["display_name"] == "ledger"  # the config's name


@pytest.mark.parametrize(
    ("expression", "kfp_form"),
    [
        ("*/15 9-17 * * MON-FRI", "0 */15 9-17 * * MON-FRI"),
        ("30 4 1,15 * *", "0 30 4 1,15 * *"),
        ("0 0 ? JAN-MAR 0", "0 0 0 ? JAN-MAR 0"),
        ("5/10 * * * *", "0 5/10 * * * *"),
        ("@daily", "0 0 0 * * *"),
        ("@weekly", "0 0 0 * * 0"),
    ],
)
def test_usual_cron_expressions_convert(expression, kfp_form):
    assert remote.kfp_cron(expression) == kfp_form


@pytest.mark.parametrize(
    ("expression", "problem"),
    [
        ("0 2 * *", "expected 5 fields (minute hour day-of-month month day-of-week), e.g. '0 2 * * 1' for Mondays at 02:00; got 4"),
        ("0 0 2 * * 1", "expected 5 fields (minute hour day-of-month month day-of-week), e.g. '0 2 * * 1' for "
                        "Mondays at 02:00; got 6; 6 fields look like KFP's seconds-first form: give the usual 5, kubetune adds the seconds"),
        ("61 * * * *", "minute field '61': 61 is outside 0-59"),
        ("0 24 * * *", "hour field '24': 24 is outside 0-23"),
        ("0 0 0 * *", "day of month field '0': 0 is outside 1-31"),
        ("0 0 * 13 *", "month field '13': 13 is outside 1-12"),
        ("0 0 * * 7", "day of week field '7': 7 is outside 0-6; Sunday is 0"),
        ("0 0 * * FUNDAY", "day of week field 'FUNDAY': 'FUNDAY' is not a number or a name (SUN-SAT)"),
        ("*/0 * * * *", "minute field '*/0': step '0' is not a positive whole number"),
        ("0 17-9 * * *", "hour field '17-9': range '17-9' runs backwards"),
        ("? * * * *", "minute field '?': '?' is not a number"),
    ],
)
def test_bad_cron_is_one_line_naming_the_option_and_nothing_is_sent(kfp_server, run_yaml, capsys, expression, problem):
    code, out, err = kubetune(capsys, "schedule", "-c", str(run_yaml), "--host", kfp_server.url, "--cron", expression)

    assert code == 2 and out == ""
    assert err.splitlines() == [f"kubetune: error: --cron {expression!r}: {problem}"]
    assert kfp_server.requests == []


@pytest.mark.parametrize(("text", "seconds"), [("30m", 1800), ("12h", 43200), ("1d", 86400), ("1w", 604800),
                                               ("1h30m", 5400), ("90s", 90)])
def test_intervals(text, seconds):
    assert remote.interval_seconds(text) == seconds


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("10", "not a duration; write numbers with units s, m, h, d or w, e.g. 30m, 12h, 1d, 1w, 1h30m"),
        ("1x", "not a duration; write numbers with units s, m, h, d or w, e.g. 30m, 12h, 1d, 1w, 1h30m"),
        ("-5m", "not a duration; write numbers with units s, m, h, d or w, e.g. 30m, 12h, 1d, 1w, 1h30m"),
        ("30s", "runs must be at least 1m apart"),
    ],
)
def test_bad_interval_is_one_line_naming_the_option_and_nothing_is_sent(kfp_server, run_yaml, capsys, text, problem):
    code, out, err = kubetune(capsys, "schedule", "-c", str(run_yaml), "--host", kfp_server.url, f"--every={text}")

    assert code == 2 and out == ""
    assert err.splitlines() == [f"kubetune: error: --every {text!r}: {problem}"]
    assert kfp_server.requests == []


def test_max_concurrency_beyond_kfps_limit_is_refused(kfp_server, run_yaml, capsys):
    code, _, err = kubetune(capsys, "schedule", "-c", str(run_yaml), "--host", kfp_server.url, "--every", "1d",
                            "--max-concurrency", "11")
    assert code == 2
    assert err.splitlines() == ["kubetune: error: --max-concurrency 11: KFP allows 1 to 10 runs at a time"]
    assert kfp_server.requests == []


def test_a_bad_start_time_is_refused(kfp_server, run_yaml, capsys):
    code, _, err = kubetune(capsys, "schedule", "-c", str(run_yaml), "--host", kfp_server.url, "--every", "1d",
                            "--start", "next monday")
    assert code == 2
    assert err.splitlines() == [
        "kubetune: error: --start 'next monday': not an ISO 8601 time; e.g. 2025-07-01T02:00:00Z, "
        "2025-07-01T02:00+02:00 or 2025-07-01"
    ]
    assert kfp_server.requests == []


def test_an_end_in_the_past_is_refused():
    with pytest.raises(KubetuneError, match=r"^--end 2025-01-01: is in the past, so the schedule would never start a run$"):
        remote.make_schedule(every="1d", end="2025-01-01",
                             now=dt.datetime(2025, 6, 1, tzinfo=dt.UTC))


def test_an_end_before_the_start_is_refused():
    with pytest.raises(KubetuneError, match=r"^--end 2030-01-01T00:00Z: is not after --start 2030-02-01T00:00Z$"):
        remote.make_schedule(cron="0 2 * * *", start="2030-02-01T00:00Z", end="2030-01-01T00:00Z",
                             now=dt.datetime(2025, 6, 1, tzinfo=dt.UTC))


def test_cron_and_every_are_exclusive(kfp_server, run_yaml, capsys):
    with pytest.raises(SystemExit) as exit_info:
        kubetune(capsys, "schedule", "-c", str(run_yaml), "--cron", "0 2 * * *", "--every", "1d")
    assert exit_info.value.code == 2
    assert "argument --every: not allowed with argument --cron" in capsys.readouterr().err
    assert kfp_server.requests == []


def test_schedule_checks_the_config_like_submit(kfp_server, run_yaml, capsys):
    code, _, err = kubetune(capsys, "schedule", "-c", str(run_yaml), "--host", kfp_server.url, "--every", "1d",
                            "storage.runs_uri=./runs")
    assert code == 2
    (line,) = err.splitlines()
    assert line.startswith(f"kubetune: error: {run_yaml}: storage.runs_uri: './runs' is a local folder")
    assert kfp_server.requests == []
