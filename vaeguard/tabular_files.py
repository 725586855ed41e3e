"""Reading and writing the tabular files the CLI works with: CSV and JSON Lines.

Files are read into a column mapping (name → list of cells) that `vaeguard.data` validates,
so a bad cell is reported with its row and column whatever the format.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from vaeguard.errors import DataError
from vaeguard.ingest import Reason, Rejection, loads, to_number

FORMATS = ("csv", "jsonl")


def detect_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix in (".csv", ".tsv", ".txt"):
        return "csv"
    raise DataError(f"{path}: unknown file type {suffix or '(none)'}; use .csv or .jsonl")


def sniff_delimiter(f, path: Path) -> str:
    """The CSV delimiter of an open text file, which is rewound: a tab for ``.tsv`` or for a
    first 4 KiB holding tabs and no comma, else a comma."""
    sample = f.read(4096)
    f.seek(0)
    if path.suffix.lower() == ".tsv" or ("\t" in sample and "," not in sample):
        return "\t"
    return ","


def read_records(path) -> list[dict[str, Any]]:
    """All rows of a CSV or JSONL file as dicts, in file order."""
    return list(iter_records(path))


def iter_records(path) -> Iterator[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a CSV or JSONL file")
    fmt = detect_format(path)
    count = 0
    with open(path, newline="", encoding="utf-8") as f:
        try:
            rows = _iter_csv(f, path) if fmt == "csv" else _iter_jsonl(f, path)
            for row in rows:
                count += 1
                yield row
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if count == 0:
        raise DataError(f"{path}: the file has no data rows")


def _iter_csv(f, path: Path) -> Iterator[dict[str, Any]]:
    reader = csv.reader(f, delimiter=sniff_delimiter(f, path))
    try:
        header = next(reader)
    except StopIteration:
        return
    header = [h.strip() for h in header]
    if not any(header):
        raise DataError(f"{path}: the first line must be a header of column names")
    for line_no, cells in enumerate(reader, start=2):
        if not cells or all(not c.strip() for c in cells):
            continue
        if len(cells) != len(header):
            raise DataError(
                f"{path}, line {line_no}: {len(cells)} cells but the header has {len(header)} columns"
            )
        yield dict(zip(header, cells, strict=True))


def _iter_jsonl(f, path: Path) -> Iterator[dict[str, Any]]:
    for line_no, line in enumerate(f, start=1):
        if not line.strip():
            continue
        row = loads(line)  # the record rules: nesting, long integers, NaN literals
        if isinstance(row, Rejection):
            what = "invalid JSON" if row.reason is Reason.INVALID_JSON else row.reason.value
            raise DataError(f"{path}, line {line_no}: {what} ({row.detail})")
        if not isinstance(row, dict):
            raise DataError(
                f"{path}, line {line_no}: expected a JSON object, got {type(row).__name__}"
            )
        yield row


def iter_raw_rows(path) -> Iterator[tuple[int, bytes | str]]:
    """(line number, the row as JSON bytes) for every data row, for the ingestion contract:
    `iter_rows` with a CSV row written as a JSON object of its cells."""
    for line_no, row in iter_rows(path):
        yield line_no, json.dumps(row).encode() if isinstance(row, dict) else row


def iter_rows(path) -> Iterator[tuple[int, bytes | dict[str, str] | str]]:
    """(line number, the row) for every data row, for the ingestion contract.

    A JSONL line is passed on as its raw bytes (so `vaeguard.ingest.decode` judges it exactly
    as the daemon judges a Kafka message); a CSV row as a dict of its cells (its size as JSON
    text: `json_text_size`). A row that cannot even be cut out of the file (a CSV line with the
    wrong number of cells) comes as a message string instead, to be reported as refused.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a CSV or JSONL file")
    if detect_format(path) == "jsonl":
        with open(path, "rb") as f:
            for line_no, line in enumerate(f, start=1):
                if line.strip():
                    yield line_no, line.rstrip(b"\r\n")
        return
    try:
        yield from _raw_csv_rows(path)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _raw_csv_rows(path: Path) -> Iterator[tuple[int, dict[str, str] | str]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter=sniff_delimiter(f, path))
        header = next(reader, None)
        if header is None:
            return
        header = [h.strip() for h in header]
        for line_no, cells in enumerate(reader, start=2):
            if not cells or all(not c.strip() for c in cells):
                continue
            if len(cells) != len(header):
                yield line_no, f"{len(cells)} cells but the header has {len(header)} columns"
                continue
            yield line_no, dict(zip(header, cells, strict=True))


def json_text_size(row: dict[str, str]) -> int:
    """The bytes of ``json.dumps(row)`` (a CSV row as the daemon would receive it), counted
    without writing the text but for a cell that needs escapes other than ``\\"`` and ``\\\\``."""
    size = 2 + 2 * max(0, len(row) - 1)  # the braces and the ", " between fields
    for name, cell in row.items():
        size += _json_string_size(name) + 2 + _json_string_size(cell)  # ": "
    return size


def _json_string_size(text: str) -> int:
    if text.isascii() and text.isprintable():  # " " to "~": only the quote and backslash escaped
        return len(text) + 2 + text.count('"') + text.count("\\")
    return len(json.dumps(text))


def csv_header(path) -> list[str] | None:
    """The column names of a CSV file (None for JSONL or an empty file)."""
    path = Path(path)
    if detect_format(path) != "csv":
        return None
    rows = _raw_csv_rows_header(path)
    return rows


def _raw_csv_rows_header(path: Path) -> list[str] | None:
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        header = next(csv.reader(f, delimiter=sniff_delimiter(f, path)), None)
    return None if header is None else [h.strip() for h in header]


def to_columns(records: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Records → column mapping; a key absent from a row becomes None (reported as missing)."""
    names: dict[str, None] = {}
    for row in records:
        names.update(dict.fromkeys(row))
    return {name: [row.get(name) for row in records] for name in names}


def read_table(path) -> dict[str, list[Any]]:
    return to_columns(read_records(path))


def jsonl_text(rows: Iterable[dict[str, Any]]) -> str:
    """Rows as JSON Lines text (one compact object per line; NaN refused)."""
    lines = [json.dumps(row, separators=(",", ":"), allow_nan=False) for row in rows]
    return "".join(line + "\n" for line in lines)


def csv_text(header: list[str], rows: Iterable[list[Any]]) -> str:
    """A header and rows as CSV text (``\n`` line ends)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def is_text_column(values: list[Any]) -> bool:
    """True when no cell of the column is a number by the records' rule (`to_number`, a
    non-finite one included): a label or name column, not bad data. Booleans do not count."""
    for value in values:
        if isinstance(value, bool):
            continue
        number = to_number(value, "cell")
        if isinstance(number, float) or (
            isinstance(number, Rejection) and number.reason is Reason.NON_FINITE
        ):
            return False
    return True
