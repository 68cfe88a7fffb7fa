"""``isofeat scaffold [PROJECT_DIR] [--no-input] [--force] [--template T] [key=value ...]``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from isofeat import argtypes
from isofeat.scaffold import VARIABLES, scaffold

_DESCRIPTION = (
    "Add PROJECT_DIR/.devcontainer/ (default: the current folder) with the isofeat cookiecutter "
    "template: the sandbox and proxy Compose files, devcontainer.json with the isofeat "
    "Features, a whitelist and the project settings. It never overwrites an existing "
    ".devcontainer/ unless --force is given, and then lists what it replaces. "
    f"Template variables: {', '.join(VARIABLES)}."
)


def _add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-input", action="store_true", help="do not ask; use defaults and key=value")
    p.add_argument(
        "--force",
        action="store_true",
        help="replace the template's files in an existing .devcontainer/ (others stay)",
    )
    p.add_argument(
        "--template",
        type=argtypes.text,
        metavar="PATH|URL",
        help="the template: an isofeat checkout, its templates/isofeat folder, or a git URL "
        "(default: this installation's checkout, else github.com/isofeat/isofeat)",
    )
    p.add_argument(
        "--no-registry-check",
        action="store_true",
        help="with features_source=oci, do not ask the registry whether the Features exist",
    )


def _words_parser() -> argparse.ArgumentParser:
    # The words after the verb, options and positionals in any order. argparse (before 3.12)
    # cannot mix them in a subparser: `scaffold DIR --no-input k=v` would fail.
    from isofeat.cli import ArgumentParser  # its errors are IsofeatErrors, escaped in main

    p = ArgumentParser(prog="isofeat scaffold", description=_DESCRIPTION)
    p.add_argument("project_dir", metavar="PROJECT_DIR", nargs="?", default=".")
    p.add_argument("assignments", metavar="key=value", nargs="*")
    _add_options(p)
    return p


def run(
    words: Sequence[str], no_input: bool, force: bool, template: str | None,
    no_registry_check: bool = False,
) -> int:
    from isofeat.errors import IsofeatError

    words = list(words)
    # After "--" every word is positional. Python 3.11's parse_intermixed_args does not
    # honour "--" (`scaffold -- --force` would set --force), so split it off here.
    rest: list[str] = []
    if "--" in words:
        cut = words.index("--")
        words, rest = words[:cut], words[cut + 1 :]
    inner = _words_parser().parse_intermixed_args(words)
    positional = [inner.project_dir] if inner.project_dir != "." or "." in words else []
    positional += [*inner.assignments, *rest]
    project_text = positional[0] if positional else "."
    project, assignments = Path(project_text), positional[1:]
    if not project_text or "\x00" in project_text:
        raise IsofeatError(f"PROJECT_DIR {project_text!r} is empty or holds a NUL",
                           fix="give the project's folder, or leave it out for the current one")
    # A lone key=value is an assignment, not a folder (unless such a folder exists).
    if "=" in project_text and not project.is_dir():
        project, assignments = Path("."), [project_text, *assignments]
    return scaffold(
        project,
        assignments,
        no_input=no_input or inner.no_input,
        force=force or inner.force,
        template=template or inner.template,
        check_features=not (no_registry_check or inner.no_registry_check),
    )


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "scaffold",
        help="add an isofeat .devcontainer/ to a project (the cookiecutter template)",
        description=_DESCRIPTION,
        usage="isofeat scaffold [PROJECT_DIR] [--no-input] [--force] [--template PATH|URL] "
        "[key=value ...]",
    )
    _add_options(p)
    p.add_argument(
        "words",
        metavar="[PROJECT_DIR] [key=value ...]",
        nargs=argparse.REMAINDER,
        help="the project folder, then template variables, e.g. docker_in_docker=yes "
        "agents=claude,codex extra_whitelist=api.example.com features_source=local",
    )
    p.set_defaults(
        func=lambda a: run(a.words, a.no_input, a.force, a.template, a.no_registry_check)
    )
