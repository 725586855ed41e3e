"""`vaeguard nab`: run the streaming window detector over a NAB corpus, write NAB result files."""

from __future__ import annotations

from pathlib import Path

import typer

from vaeguard.errors import ConfigError, DataError


def nab(
    data_dir: Path = typer.Option(
        ..., "--data-dir", help="Folder of <category>/<series>.csv (timestamp,value)."
    ),
    out: Path = typer.Option(
        ..., "--out", help="Results folder: writes OUT/NAME/<category>/NAME_<series>.csv."
    ),
    detector_name: str = typer.Option(
        "vaeguard", "--detector-name", help="NAME of the detector in the results."
    ),
    jobs: int = typer.Option(2, "--jobs", min=1, help="Worker processes (series run in parallel)."),
    params: Path | None = typer.Option(
        None,
        "--params",
        help="JSON overrides of the detector configuration (window, views, likelihood, schedule; every series).",
    ),
    quiet: bool = typer.Option(False, "--quiet", help="Print only the summary line."),
    as_json: bool = typer.Option(
        False, "--json", help="Print the summary as one JSON object on stdout (no progress)."
    ),
) -> None:
    """Score every series of a NAB corpus causally (NAB's rules) and write its result files.

    Labels for the ``label`` column come from a combined_labels.json in DATA_DIR or above it.
    """
    from vaeguard.apps.nab import merged_params, run_nab
    from vaeguard.cli._common import json_option, print_json, usage

    overrides = json_option(params, "--params")
    try:
        config = merged_params(overrides)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise usage(f"the detector configuration is not valid: {exc}", "--params") from None
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: no such folder (a NAB corpus: <category>/<series>.csv)")

    def progress(result) -> None:
        if not (quiet or as_json):
            s = result["series"]
            typer.echo(f"{s.key}: {len(result['stamps'])} rows in {result['seconds']:.1f} s")

    run = run_nab(data_dir, out, detector_name, params=config, jobs=jobs, progress=progress)
    if as_json:
        print_json(
            {
                "series": len(run.results),
                "rows": run.rows,
                "seconds": round(run.seconds, 3),
                "jobs": jobs,
                "out": str(out / detector_name),
            }
        )
        return
    typer.echo(
        f"{len(run.results)} series, {run.rows} rows in {run.seconds:.1f} s "
        f"({jobs} job{'s' if jobs > 1 else ''}) → {out / detector_name}"
    )


def register(app: typer.Typer) -> None:
    app.command()(nab)
