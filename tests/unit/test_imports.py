"""The package's import structure: no cycles, verbs on top, and ``layout`` light.

Read from the source (every ``import``, also those inside functions), so a lazy import counts
as much as one at the top of a module.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "isofeat"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(name: str) -> set[str]:
    """The isofeat modules that ``name`` imports (the most specific module each names)."""
    found: set[str] = set()
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1],
                                 *([base] if base else [])])
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                       for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t in MODULES and t != name)
    return found


GRAPH = {name: _imports(name) for name in MODULES}


def test_no_import_cycles() -> None:
    done: set[str] = set()

    def visit(name: str, stack: list[str]) -> None:
        if name in stack:
            raise AssertionError("import cycle: " + " -> ".join([*stack[stack.index(name):], name]))
        if name in done:
            return
        for target in sorted(GRAPH[name]):
            visit(target, [*stack, name])
        done.add(name)

    for name in sorted(GRAPH):
        visit(name, [])


def _is_verb(name: str) -> bool:
    return name.startswith("isofeat.commands.") and name != "isofeat.commands._options"


def test_no_module_imports_a_verb_module() -> None:
    # cli.py reaches the verbs by name (importlib), never by an import statement.
    wrong = {(name, target) for name, targets in GRAPH.items() for target in targets
             if _is_verb(target)}
    assert not wrong


def test_cli_knows_every_verb_module() -> None:
    from isofeat.cli import COMMAND_MODULES, FAST_VERBS

    verbs = {name.rpartition(".")[2] for name in MODULES if _is_verb(name)}
    assert set(COMMAND_MODULES) == verbs
    assert set(FAST_VERBS.values()) <= verbs


def test_layout_imports_nothing_heavy() -> None:
    """``isofeat init`` imports layout on every container open."""
    code = ("import sys; import isofeat.layout, isofeat.settings; "
            "print(' '.join(sorted(m for m in sys.modules if m.partition('.')[0] in "
            "('typing', 'dataclasses', 'tempfile', 'json', 'docker', 'git', 'yaml', "
            "'jsonschema', 'cookiecutter', 'isofeat'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    # settings reads isofeat.json (json is cheap and in use by init already).
    assert set(out) <= {"isofeat", "isofeat.layout", "isofeat.settings", "isofeat.envvars",
                        "isofeat.errors", "json", "json.decoder", "json.scanner",
                        "json.encoder"}, out
