"""Entry point of the `vaeguard` command: builds the Typer app and turns errors into one line.

Command modules import TensorFlow and Kafka lazily, inside the commands, so `vaeguard --help`
and the light commands start instantly.
"""

from __future__ import annotations

import os
import sys

import typer
from typer.core import TyperGroup

from vaeguard._version import __version__
from vaeguard.cli.exit_codes import ExitCode, exit_code_of, help_epilog

#: The click exceptions typer raises (typer may vendor its own click).
_cx = sys.modules[typer.BadParameter.__module__]


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class _Vaeguard(TyperGroup):
    """The root command: every error, its own or click's, is one line on stderr and an
    `ExitCode`; the test runner (`typer.testing.CliRunner`) goes through this too."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _cx.NoArgsIsHelpError as exc:
            exc.show()  # a group called bare: its help
            sys.exit(exc.exit_code)
        except _cx.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else "vaeguard"
            _error(f"{_one_line(_usage_message(exc))} (see {where} --help)")
            sys.exit(ExitCode.USAGE)
        except typer.Abort:
            _error("aborted")
            sys.exit(ExitCode.FAILURE)
        except _cx.ClickException as exc:
            _error(_one_line(exc.format_message()))
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            typer.echo("vaeguard: interrupted", err=True)
            sys.exit(ExitCode.INTERRUPTED)
        except Exception as exc:
            sys.exit(_report(exc))
        sys.exit(code if isinstance(code, int) else ExitCode.OK)


def _usage_message(exc) -> str:
    """A bad option value as ``--option: problem`` (click says "Invalid value for '--option':")."""
    try:
        if isinstance(exc, _cx.BadParameter) and not isinstance(exc, _cx.MissingParameter):
            return _bad_value(exc) or exc.format_message()
    except Exception:  # never a traceback from the error path
        pass
    return exc.format_message()


def _bad_value(exc) -> str | None:
    hint = exc.param_hint
    if hint is None and exc.param is not None:
        opts = [o for o in getattr(exc.param, "opts", ()) if o.startswith("--")]
        hint = opts[0] if opts else getattr(exc.param, "name", None)
    if not hint:
        return None
    names = [hint] if isinstance(hint, str) else list(hint)
    problem = str(exc.message).removeprefix("Value error, ")
    return f"{' / '.join(str(n).strip(chr(39)) for n in names)}: {problem}"


def _error(message: str) -> None:
    typer.echo(f"vaeguard: error: {message}", err=True)


def _report(exc: Exception) -> ExitCode:
    """One line for an error a command raised; its code."""
    from vaeguard.errors import VaeguardError

    code = exit_code_of(exc)
    if isinstance(exc, VaeguardError):
        _error(_one_line(str(exc)))
    elif isinstance(exc, BrokenPipeError):  # `vaeguard score --out - | head`: a reader left
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (flushed at exit)
    elif isinstance(exc, OSError):
        where = f": {exc.filename}" if exc.filename else ""
        _error(f"{exc.strerror or _one_line(str(exc))}{where}")
    else:
        if os.environ.get("VAEGUARD_DEBUG"):
            raise exc
        _error(
            f"internal error, please report it: {type(exc).__name__}: {_one_line(str(exc))} "
            "(VAEGUARD_DEBUG=1 shows the traceback)"
        )
    return code


app = typer.Typer(
    name="vaeguard",
    cls=_Vaeguard,
    help="Anomaly detection on Kafka streams with a variational autoencoder.",
    epilog=help_epilog(),
    no_args_is_help=True,
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


def main() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    app(prog_name="vaeguard")


if __name__ == "__main__":
    main()
