"""Model registry commands: `vaeguard models list | show | promote | rollback | prune`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

models = typer.Typer(
    help="Inspect and manage the versions in a model registry.", no_args_is_help=True
)

REGISTRY = typer.Option(..., "--registry", help="Registry directory.")
JSON = typer.Option(False, "--json", help="Print the outcome as one JSON object.")


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
    full: bool = typer.Option(
        False, "--full", help="The whole validated manifest instead of its summary."
    ),
) -> None:
    """A version's lineage and what its bundle holds (validated), as JSON."""
    from vaeguard.bundle import model_kind, read_manifest, tabular_summary

    reg = _open(registry)
    info = reg.info(version)
    manifest = read_manifest(info.path)
    shown = {**info.to_json(), "lineage": info.lineage}
    if full:
        shown["manifest"] = manifest
    elif model_kind(manifest) == "tabular":
        shown["bundle"] = tabular_summary(manifest)
    else:
        shown["bundle"] = _trimmed(manifest)
    typer.echo(json.dumps(shown, indent=2))


def _trimmed(node, limit: int = 16):
    """A manifest with every list longer than ``limit`` (calibration samples, reference sets)
    replaced by a note of its length: `models show` stays readable, --full has them."""
    if isinstance(node, dict):
        return {k: _trimmed(v, limit) for k, v in node.items()}
    if isinstance(node, list):
        if len(node) > limit:
            return f"<{len(node)} values: --full shows them>"
        return [_trimmed(v, limit) for v in node]
    return node


@models.command("promote")
def promote(
    version: str = typer.Argument(...), registry: Path = REGISTRY, as_json: bool = JSON
) -> None:
    """Make a version current (after checking that it loads)."""
    name = _open(registry).promote(version)
    if as_json:
        typer.echo(json.dumps({"current": name}))
    else:
        typer.echo(f"{name} is now current")


@models.command("rollback")
def rollback(registry: Path = REGISTRY, as_json: bool = JSON) -> None:
    """Make the previous current version current again."""
    name = _open(registry).rollback()
    if as_json:
        typer.echo(json.dumps({"current": name}))
    else:
        typer.echo(f"rolled back: {name} is now current")


@models.command("prune")
def prune(
    keep: int = typer.Option(..., "--keep", min=1, help="How many of the newest versions to keep."),
    registry: Path = REGISTRY,
    as_json: bool = JSON,
) -> None:
    """Delete old versions (never the current one or its rollback target)."""
    reg = _open(registry)
    removed = reg.prune(keep)
    kept = reg.version_names()
    current = reg.current()
    # what survived beyond the newest `keep` is what prune never deletes: say why
    why = {
        name: "current" if name == current else "the current version's rollback target"
        for name in kept[:-keep]
    }
    if as_json:
        typer.echo(json.dumps({"removed": removed, "kept": kept, "protected": why}))
        return
    newest = kept[-keep:]
    reason = f"; kept {len(kept)}: the newest {len(newest)} ({', '.join(newest)})" + "".join(
        f", {name} ({because})" for name, because in why.items()
    )
    typer.echo(
        f"removed {len(removed)} version(s){': ' + ', '.join(removed) if removed else ''}{reason}"
    )


def register(app: typer.Typer) -> None:
    app.add_typer(models, name="models")
