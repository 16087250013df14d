"""The demo ledger: deterministic, realistic in shape, and learnable but not trivially."""

from __future__ import annotations

import pandas as pd
import pytest

from kubetune.data.demo import COLUMNS, generate_ledger, parse_demo_uri
from kubetune.errors import DataError


def test_same_seed_same_ledger_other_seed_other_ledger():
    pd.testing.assert_frame_equal(generate_ledger(500, 3), generate_ledger(500, 3))
    assert not generate_ledger(500, 3)["description"].equals(generate_ledger(500, 4)["description"])


def test_columns_and_value_shapes():
    frame = generate_ledger(2000, 0)
    assert tuple(frame.columns) == COLUMNS
    assert frame["line_id"].is_unique
    assert pd.to_datetime(frame["payment_date"], format="%Y-%m-%d").between("2023-01-01", "2024-12-31").all()
    assert (frame["amount"] > 0).all() and (frame["amount"].round(2) == frame["amount"]).all()
    assert set(frame["payment_method"]) <= {"BACS", "Direct Debit", "Purchase Card", "Cheque", "CHAPS"}


def test_codes_are_many_and_skewed():
    from kubetune.data.demo import ACCOUNTS

    counts = generate_ledger(10000, 0)["account_code"].value_counts()
    assert len(ACCOUNTS) == 45 and set(counts.index) == {account.code for account in ACCOUNTS}
    # Seed 0: the most frequent code has 51 times the rows of the rarest.
    assert (counts.index[0], counts.iloc[0]) == ("6610-POSTAGE", 2297)
    assert (counts.index[-1], counts.iloc[-1]) == ("6910-MEMBERSHIPS", 45)


def test_suppliers_appear_under_several_codes():
    frame = generate_ledger(5000, 0)
    codes_per_supplier = frame.groupby("supplier")["account_code"].nunique()
    assert len(codes_per_supplier) == 221 and int((codes_per_supplier > 1).sum()) == 54
    assert codes_per_supplier.max() == 39  # marketplace suppliers sell almost anything


def test_descriptions_are_noisy():
    descriptions = generate_ledger(5000, 0)["description"]
    assert int(descriptions.str.contains(r"\d{4,}").sum()) == 1725  # reference numbers
    assert int(descriptions.str.isupper().sum()) == 809
    assert descriptions.nunique() == 3246


@pytest.mark.slow
def test_a_bag_of_ngrams_baseline_is_well_above_chance_and_clearly_below_perfect():
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline

    frame = generate_ledger(6000, 0)
    text = (frame["supplier"] + " | " + frame["description"] + " | " + frame["department"] + " | "
            + frame["amount"].map("{:.2f}".format) + " | " + frame["payment_method"])
    x_train, x_test, y_train, y_test = train_test_split(text, frame["account_code"], test_size=0.2, random_state=0)
    model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
                          LogisticRegression(C=10, solver="saga", max_iter=300))
    accuracy = model.fit(x_train, y_train).score(x_test, y_test)
    assert 0.75 <= accuracy <= 0.92, accuracy


@pytest.mark.parametrize(
    ("uri", "expected"),
    [("demo://ledger", (20000, 0)), ("demo://ledger?rows=10", (10, 0)), ("demo://ledger?rows=5&seed=7", (5, 7))],
)
def test_demo_uri_parameters(uri: str, expected: tuple[int, int]):
    assert parse_demo_uri(uri) == expected


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("demo://payroll", r"^data\.uri: unknown demo data 'demo://payroll'"),
        ("demo://ledger?size=3", r"^data\.uri: unknown parameter\(s\) size in 'demo://ledger\?size=3'"),
        ("demo://ledger?rows=many", r"^data\.uri: rows='many' in .* is not a whole number"),
        ("demo://ledger?rows=0", r"^data\.uri: rows must be at least 1"),
    ],
)
def test_bad_demo_uri_names_the_key(uri: str, message: str):
    with pytest.raises(DataError, match=message):
        parse_demo_uri(uri)
