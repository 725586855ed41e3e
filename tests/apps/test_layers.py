"""The apps boundary: the library never imports `vaeguard.apps` (only the CLI and the apps do).

Apps (the demo, the replay, the NAB runner) sit on top of the library; a library module that
imported one would run back up the layers. Every import is read from the source with `ast`,
including imports inside functions, relative imports and ``importlib.import_module("...")``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "vaeguard"
APPS = "vaeguard.apps"
#: Packages allowed to import the apps: the apps themselves and the command line on top.
ALLOWED = ("vaeguard.apps", "vaeguard.cli")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_names(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, absolute dotted name) of every module a source file imports, at any depth."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            found.append((node.lineno, stem))
            # ``from vaeguard import apps`` names the package through its alias.
            found += [(node.lineno, f"{stem}.{alias.name}") for alias in node.names]
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, node.args[0].value))
    return found


def _inside(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def violations(root: Path) -> list[str]:
    """``file:line imports name`` for each library module under ``root`` importing the apps."""
    out = []
    for path in sorted(root.rglob("*.py")):
        module = module_name(path, root)
        if any(_inside(module, allowed) for allowed in ALLOWED):
            continue
        source = path.read_text(encoding="utf-8")
        lines: dict[int, str] = {}
        for line, name in imported_names(source, module, path.name == "__init__.py"):
            if _inside(name, APPS):
                lines.setdefault(line, name)
        out += [f"{path.relative_to(root.parent)}:{n} imports {name}" for n, name in lines.items()]
    return out


def test_no_library_module_imports_the_apps():
    assert (PACKAGE / "apps" / "__init__.py").is_file()
    assert violations(PACKAGE) == []


@pytest.mark.parametrize(
    "source",
    [
        "import vaeguard.apps.demo\n",
        "from vaeguard.apps.online import run_online\n",
        "from vaeguard import apps\n",
        "def later():\n    from vaeguard.apps import nab\n    return nab\n",
        "from ..apps import replay\n",
        "import importlib\nimportlib.import_module('vaeguard.apps.nab')\n",
    ],
)
def test_an_import_of_the_apps_from_the_library_is_caught(tmp_path, source):
    root = tmp_path / "vaeguard"
    (root / "apps").mkdir(parents=True)
    (root / "timeseries").mkdir()
    (root / "cli").mkdir()
    (root / "apps" / "__init__.py").write_text("")
    (root / "apps" / "nab.py").write_text("from vaeguard.apps.online import run_online\n")
    (root / "cli" / "nab_cmds.py").write_text("from vaeguard.apps.nab import run_nab\n")
    (root / "timeseries" / "views.py").write_text(source)
    (root / "timeseries" / "clean.py").write_text("from vaeguard.timeseries import views\n")
    found = violations(root)
    # One finding, in the library module; the apps and the CLI may import the apps.
    assert len(found) == 1 and found[0].startswith("vaeguard/timeseries/views.py:"), found
