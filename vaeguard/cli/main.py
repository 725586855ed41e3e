"""Entry point of the `vaeguard` command: builds the Typer app and turns errors into one line.

Command modules import TensorFlow and Kafka lazily, inside the commands, so `vaeguard --help`
and the light commands start instantly.
"""

from __future__ import annotations

import os
import sys

import typer

from vaeguard._version import __version__
from vaeguard.errors import VaeguardError

app = typer.Typer(
    name="vaeguard",
    help="Anomaly detection on Kafka streams with a variational autoencoder.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"vaeguard {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Anomaly detection on Kafka streams with a variational autoencoder."""


def _register() -> None:
    from vaeguard.cli import (
        alert_cmds,
        daemon_cmds,
        model_cmds,
        nab_cmds,
        registry_cmds,
        retrain_cmds,
        window_cmds,
    )

    for module in (
        model_cmds,
        window_cmds,
        daemon_cmds,
        alert_cmds,
        registry_cmds,
        retrain_cmds,
        nab_cmds,
    ):
        module.register(app)


_register()


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print one error line on stderr and return the Exit to raise."""
    typer.echo(f"vaeguard: error: {message}", err=True)
    return typer.Exit(code)


def main() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    try:
        app()
    except VaeguardError as exc:
        typer.echo(f"vaeguard: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        typer.echo("vaeguard: interrupted", err=True)
        sys.exit(130)
    except OSError as exc:
        typer.echo(
            f"vaeguard: error: {exc.strerror or exc}{': ' + str(exc.filename) if exc.filename else ''}",
            err=True,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
