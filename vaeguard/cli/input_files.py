"""`--input-settings`: training reads a file of Telegraf / Prometheus / OTLP messages as the
daemon reads its topics, so one field mapping (the settings' ``input:`` section) serves both."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import typer

from vaeguard.cli._common import usage
from vaeguard.errors import DataError

OPTION = "--input-settings"
HELP = (
    "The daemon's settings file (YAML; VAEGUARD_INPUT__* apply too): its input: section "
    "(format, fields, entity, time) says how --data is written, one message per line."
)


def input_records(
    data: Path,
    settings_file: Path,
    *,
    required: list[str] | None,
    entity_field: str = "key",
    time_field: str = "ts",
    assemble: bool,
    conditions: Sequence[str] = (),
) -> list[dict[str, Any]] | None:
    """The flat records a JSONL file of messages gives (None: the format is flat, read the
    file as usual). Refused messages are counted on stderr, as the daemon would dead-letter
    them. ``conditions`` (a CVAE's, e.g. from a tag: ``role: tags.role``) are taken as they
    are, so a category stays a category, and a row needs them as it needs a feature."""
    from vaeguard.config import load_settings
    from vaeguard.input_formats import InputReader, read_messages
    from vaeguard.tabular_files import iter_raw_rows

    settings = load_settings(settings_file)
    spec = settings.input.spec()
    if spec.flat:
        return None
    names = list(required or spec.fields)
    names += [c for c in conditions if c not in names]
    unmapped = [c for c in conditions if spec.fields and c not in spec.fields]
    if unmapped:
        raise usage(
            f"condition(s) {', '.join(map(repr, unmapped))} have no selector in input.fields "
            "(e.g. role: tags.role)",
            "--conditions",
        )
    if not names:
        raise usage(
            f"input.format {spec.format} needs the features named: --features / --metrics, "
            "or input.fields",
            OPTION,
        )
    reader = InputReader(
        spec,
        entity_field=entity_field,
        time_field=time_field,
        required=names,
        assemble=assemble,
        labels=conditions,
    )
    records, refused = read_messages(iter_raw_rows(data), reader, settings.scoring.max_record_bytes)
    if refused:
        reasons = Counter(str(r.reason) for _, r in refused)
        line, first = refused[0]
        typer.echo(
            f"{len(refused)} message(s) refused as the daemon would dead-letter them "
            f"({', '.join(f'{k}: {n}' for k, n in reasons.most_common())}); first, line "
            f"{line}: {first.detail}",
            err=True,
        )
    if not records:
        raise DataError(
            f"{data}: no records in input.format {spec.format} hold the features {', '.join(names)}"
        )
    return records
