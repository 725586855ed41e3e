"""Model registry commands: `vaeguard models list | show | promote | rollback | prune`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

models = typer.Typer(
    help="Inspect and manage the versions in a model registry.", no_args_is_help=True
)

REGISTRY = typer.Option(..., "--registry", help="Registry directory.")


def _open(path: Path):
    from vaeguard.registry import ModelRegistry

    return ModelRegistry(path)


@models.command("list")
def list_versions(
    registry: Path = REGISTRY,
    as_json: bool = typer.Option(False, "--json", help="A JSON array of objects."),
) -> None:
    """All versions, oldest first, with the current one marked."""
    versions = [v.to_json() for v in _open(registry).versions()]
    if as_json:
        typer.echo(json.dumps(versions, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"model registry {registry}", title_justify="left")
    for column in ("", "version", "created", "parent", "source", "threshold", "metrics"):
        t.add_column(column)
    for v in versions:
        metrics = ", ".join(
            f"{k} {val:.4g}" if isinstance(val, float) else f"{k} {val}"
            for k, val in v["metrics"].items()
        )
        t.add_row(
            "●" if v["current"] else "",
            v["version"],
            v["created_at"],
            v["parent"] or "",
            v["source"] or "",
            f"{v['threshold']:.4g}" if v["threshold"] is not None else "?",
            metrics,
        )
    Console().print(t)


@models.command("show")
def show(
    version: str = typer.Argument(..., help="Version name (v0003) or number (3)."),
    registry: Path = REGISTRY,
) -> None:
    """A version's lineage and bundle manifest (validated)."""
    from vaeguard.bundle import read_manifest

    reg = _open(registry)
    info = reg.info(version)
    manifest = read_manifest(info.path)
    typer.echo(
        json.dumps({**info.to_json(), "lineage": info.lineage, "manifest": manifest}, indent=2)
    )


@models.command("promote")
def promote(version: str = typer.Argument(...), registry: Path = REGISTRY) -> None:
    """Make a version current (after checking that it loads)."""
    name = _open(registry).promote(version)
    typer.echo(f"{name} is now current")


@models.command("rollback")
def rollback(registry: Path = REGISTRY) -> None:
    """Make the previous current version current again."""
    name = _open(registry).rollback()
    typer.echo(f"rolled back: {name} is now current")


@models.command("prune")
def prune(
    keep: int = typer.Option(..., "--keep", min=1, help="How many of the newest versions to keep."),
    registry: Path = REGISTRY,
) -> None:
    """Delete old versions (never the current one or its rollback target)."""
    removed = _open(registry).prune(keep)
    typer.echo(f"removed {len(removed)} version(s){': ' + ', '.join(removed) if removed else ''}")


def register(app: typer.Typer) -> None:
    app.add_typer(models, name="models")
