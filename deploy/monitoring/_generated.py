"""The command line of a generated file in deploy/ (`dashboard.py`, `prometheusrule.py`):
write it, or with ``--check`` exit 1 when the committed copy differs from what the code makes."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path


def main(render: Callable[[], str], out: Path, script: str, argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=f"write {out.name} (generated)")
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if the committed file is not up to date"
    )
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not out.exists() or out.read_text(encoding="utf-8") != text:
            print(f"{out} is out of date: run python {Path(script).name}", file=sys.stderr)
            return 1
        return 0
    out.write_text(text, encoding="utf-8")
    print(f"wrote {out}")
    return 0
