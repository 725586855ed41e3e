"""vaeguard.tabular_files: one delimiter rule for every reader of a CSV file."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vaeguard.tabular_files import (
    csv_header,
    is_text_column,
    iter_raw_rows,
    json_text_size,
    read_records,
    sniff_delimiter,
)


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("a.csv", "x,y\n1,2\n", ","),
        ("a.tsv", "x,y\n1,2\n", "\t"),  # the suffix decides
        ("a.TSV", "x\ty\n", "\t"),
        ("a.txt", "x\ty\n1\t2\n", "\t"),  # tabs and no comma
        ("a.csv", "x\ty,z\n", ","),  # a comma anywhere: comma
        ("a.txt", "", ","),
    ],
)
def test_sniff_delimiter(name, text, expected):
    f = io.StringIO(text)
    assert sniff_delimiter(f, Path(name)) == expected
    assert f.tell() == 0


@given(text=st.text(alphabet=st.sampled_from("ab,\t\n\"' 1"), max_size=5000))
def test_sniff_delimiter_any_text_gives_a_delimiter_and_rewinds(text):
    f = io.StringIO(text)
    assert sniff_delimiter(f, Path("data.csv")) in (",", "\t")
    assert f.read() == text


def test_every_reader_cuts_a_tab_separated_file_the_same_way(tmp_path):
    path = tmp_path / "rows.txt"
    path.write_text("ts\tcpu\n1\t0.5\n2\t0.7\n", encoding="utf-8")
    assert csv_header(path) == ["ts", "cpu"]
    assert read_records(path) == [{"ts": "1", "cpu": "0.5"}, {"ts": "2", "cpu": "0.7"}]
    assert [json.loads(row) for _, row in iter_raw_rows(path)] == read_records(path)


@given(
    row=st.dictionaries(
        st.text(max_size=6),
        st.text(max_size=12) | st.sampled_from(['say "hi"', "a\\b", "tab\there", "\x7f", "é😀"]),
        max_size=5,
    )
)
def test_a_csv_rows_size_is_its_json_texts(row):
    """`vaeguard score` holds a CSV row to --max-record-bytes by the size of the JSON text the
    daemon would receive for it, counted without writing the text."""
    assert json_text_size(row) == len(json.dumps(row).encode())


@pytest.mark.parametrize(
    ("cells", "text"),
    [
        (["web-1", "db", None, ""], True),
        (["web-1", "12.5"], False),  # one number makes it a (partly bad) number column
        ([" 3 ", "1e3"], False),
        (["nan", "inf"], False),  # numbers, if not finite: refused by name when trained on
        (["1_000", "12,5", "0x10"], True),  # not numbers by the records' rule
        ([True, False], True),  # booleans do not make a feature column on their own
        ([{"a": 1}, [1]], True),
        ([7], False),
    ],
)
def test_a_text_column_is_one_with_no_cell_the_records_rule_reads_as_a_number(cells, text):
    """`vaeguard train` leaves text columns out of the features: the same rule as every
    record path decides what a number is (`ingest.to_number`)."""
    assert is_text_column(cells) is text


@given(st.lists(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)))
def test_any_column_is_text_or_not_without_raising(cells):
    assert is_text_column(cells) in (True, False)
