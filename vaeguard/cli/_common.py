"""What every command does the same way: models, data in, results out, usage errors.

- A model option takes a bundle directory or a registry (its current version); a registry's
  version is itself a bundle directory (``REGISTRY/v0003``).
- A data option takes a file, or ``-`` for standard input (CSV or JSON Lines, told apart by
  the first character); an output option takes a file, or ``-`` for standard output.
- A bad option value is a usage error (exit 2, nothing done); a bad file is a failure (exit 1).
"""

from __future__ import annotations

import atexit
import json
import shutil
import sys
import tempfile
from enum import StrEnum
from pathlib import Path
from typing import Any

import typer

from vaeguard.errors import DataError, RegistryError

#: The click exceptions typer raises (typer may vendor its own click).
_cx = sys.modules[typer.BadParameter.__module__]

STDIO = "-"


class OutputFormat(StrEnum):
    """A results file's format (default: from the file name; JSON Lines on stdout)."""

    jsonl = "jsonl"
    csv = "csv"


def usage(message: str, option: str | None = None) -> Exception:
    """The error to raise for a bad option value: exit 2, one line naming ``option``."""
    if option is not None:
        return typer.BadParameter(message, param_hint=f"'{option}'")
    return _cx.UsageError(message)


def json_option(path: Path | None, option: str) -> Any:
    """The JSON value in the file an option names (None without one); an unreadable file or
    text that is not JSON is a usage error naming the option."""
    if path is None:
        return None
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise usage(f"{path}: not a readable JSON file ({exc})", option) from None


def is_stdio(path: Path | str | None) -> bool:
    return path is not None and str(path) == STDIO


# -- models ------------------------------------------------------------------------------------


def model_path(path: Path) -> tuple[Path, str | None]:
    """The bundle directory ``path`` names, and its registry version (None for a bundle).

    A registry serves its current version, as the daemon's ``model.path`` does; a version
    folder (``REGISTRY/v0003``) is a bundle directory and is used as it is.
    """
    from vaeguard.registry import ModelRegistry, is_registry, is_version_name

    if is_registry(path):
        registry = ModelRegistry(path)
        current = registry.current()
        if current is None:
            raise RegistryError(
                f"registry {path} has no current version "
                f"(`vaeguard models promote VERSION --registry {path}`)"
            )
        return registry.path_of(current), current
    if is_version_name(path.name) and is_registry(path.parent):
        return path, path.name
    return path, None


def check_kind(path: Path, command: str, serves: tuple[str, ...] = ("tabular",)) -> str:
    """The model kind of the bundle at ``path``; a usage error if ``command`` cannot serve it."""
    from vaeguard.bundle import model_kind, read_manifest

    kind = model_kind(read_manifest(path))
    if kind not in serves:
        raise usage(
            f"{command} cannot serve a {kind} bundle ({path}); it serves "
            + " and ".join(f"{k} bundles" for k in serves)
            + (
                " (window bundles: vaeguard score, evaluate, inspect, run)"
                if kind == "window" and "window" not in serves
                else ""
            ),
            "--model",
        )
    return kind


def load_model(path: Path, command: str):
    """The tabular `VAEDetector` a model option names (a bundle or a registry)."""
    from vaeguard.detector import VAEDetector

    bundle, _ = model_path(path)
    check_kind(bundle, command)
    return VAEDetector.load(bundle)


# -- data in -----------------------------------------------------------------------------------


def input_file(path: Path, option: str = "--data") -> Path:
    """``path`` checked before any work (it exists, is a file), or standard input as a file.

    Standard input is copied into a private temporary file named ``.jsonl`` when its first
    character opens a JSON object, ``.csv`` otherwise, so every reader sees a named file.
    """
    if not is_stdio(path):
        if not path.exists():
            raise DataError(f"{path}: no such file")
        if path.is_dir():
            raise DataError(f"{path}: is a directory, expected a CSV or JSONL file")
        return path
    if sys.stdin is None or (hasattr(sys.stdin, "isatty") and sys.stdin.isatty()):
        raise usage("reads standard input, but it is a terminal (pipe data into it)", option)
    raw = sys.stdin.buffer if hasattr(sys.stdin, "buffer") else None
    data = raw.read() if raw is not None else sys.stdin.read().encode()
    first = data.lstrip()[:1]
    folder = Path(tempfile.mkdtemp(prefix="vaeguard-stdin-"))
    atexit.register(shutil.rmtree, folder, True)
    target = folder / ("stdin.jsonl" if first in (b"{", b"[") else "stdin.csv")
    target.write_bytes(data)
    return target


# -- results out -------------------------------------------------------------------------------


def output_format(path: Path, fmt: OutputFormat | None) -> str:
    """``--format`` if given, else the format the file name says (JSON Lines for stdout)."""
    if fmt is not None:
        return fmt.value
    if is_stdio(path):
        return "jsonl"
    from vaeguard.tabular_files import detect_format

    try:
        return detect_format(path)
    except DataError as exc:
        raise usage(f"{exc} (or say --format jsonl|csv)", "--out") from None


def write_output(path: Path, text: str) -> None:
    """Write a results file whole (atomically), or ``text`` to stdout for ``-``."""
    if is_stdio(path):
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    from vaeguard.files import write_atomic

    write_atomic(path, text.encode())


def print_json(obj: Any) -> None:
    """A command's result as one JSON document on stdout (``--json``)."""
    typer.echo(json.dumps(obj, default=str))


def facts_table(title: str):
    """A two-column table of named facts (a summary, `inspect`): a long value, such as a path,
    wraps whole instead of being cut short with "…"."""
    from rich.table import Table

    t = Table(title=title, show_header=False, title_justify="left")
    t.add_column()
    t.add_column(overflow="fold")
    return t


def check_json_and_out(as_json: bool, out: Path | None) -> None:
    if as_json and is_stdio(out):
        raise usage("--json prints the summary on stdout, where --out - writes the rows", "--json")


def check_destinations(out: Path | None, registry: Path | None) -> None:
    """Refuse, before training, a place the model could not be written to afterwards."""
    from vaeguard.bundle import MANIFEST_FILE
    from vaeguard.registry import is_registry

    if out is None and registry is None:
        raise usage("say where the model goes: --out DIR and/or --registry DIR")
    if out is not None:
        if out.exists() and not out.is_dir():
            raise usage(f"cannot write a bundle to {out}: it is a file", "--out")
        if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST_FILE).exists():
            raise usage(
                f"{out} is not empty and holds no bundle (refusing to write into it)", "--out"
            )
    if registry is not None and not is_registry(registry) and registry.exists():
        if (registry / MANIFEST_FILE).exists():
            raise usage(f"{registry} is a single model bundle, not a registry", "--registry")
        if not registry.is_dir() or any(registry.iterdir()):
            raise usage(f"{registry} is not a registry and not an empty folder", "--registry")
