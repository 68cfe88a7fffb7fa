"""Add an isofeat ``.devcontainer/`` to a project with the cookiecutter template.

``isofeat scaffold`` is a thin wrapper around ``cookiecutter <template> --directory
templates/isofeat -o PROJECT``: the template's own ``pre_gen_project`` hook is the one place
that validates the answers, so the CLI and plain cookiecutter refuse exactly the same values.
What the wrapper adds is what cookiecutter cannot know: it refuses an existing
``.devcontainer/`` before asking anything, rejects unknown variables (cookiecutter ignores
them silently), and never hands cookiecutter a value it would evaluate as a Jinja template.

The Dev Container Template (``templates/devcontainer-template/``) is generated from the same
cookiecutter source by ``scripts/build-devcontainer-template``, in a checkout: not in the wheel.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

from isofeat.errors import IsofeatError

#: Where the template lives inside the isofeat repository.
TEMPLATE_DIRECTORY = "templates/isofeat"
#: The template used when this package does not sit in a repository checkout.
DEFAULT_TEMPLATE_REPO = "https://github.com/isofeat/isofeat"

#: The variables a user may set: the keys of the template's cookiecutter.json that do not
#: start with "_". A copy, because a wheel carries no template (it may come from GitHub) and
#: `isofeat scaffold` must reject an unknown variable before cookiecutter silently drops it;
#: tests/unit/test_layout.py compares it with cookiecutter.json.
VARIABLES: tuple[str, ...] = (
    "project_name",
    "base_image",
    "agents",
    "docker_in_docker",
    "extra_whitelist",
    "upstream_proxy",
    "no_upstream",
    "extra_ca_certs",
    "features_source",
    "features_oci_namespace",
    "features_version",
    "pids_limit",
    "mem_limit",
    "cpus",
)
_YES = {"yes", "y", "true", "1", "on"}
_NO = {"no", "n", "false", "0", "off"}
# Cookiecutter renders every value as a Jinja template before the hook sees it.
_JINJA = re.compile(r"\{[{%#]")


def repo_root() -> Path | None:
    """The repository checkout this package runs from (an editable install), if any."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / TEMPLATE_DIRECTORY / "cookiecutter.json").is_file() else None


def template_source(template: str | None) -> tuple[str, str | None]:
    """``(template, directory)`` for cookiecutter: the given one, the checkout's, or GitHub's."""
    if template:
        path = Path(template).expanduser()
        if (path / "cookiecutter.json").is_file():
            return str(path.resolve()), None
        if (path / TEMPLATE_DIRECTORY / "cookiecutter.json").is_file():
            return str(path.resolve()), TEMPLATE_DIRECTORY
        # A URL or cookiecutter abbreviation (gh:owner/repo): the repository's layout.
        return template, TEMPLATE_DIRECTORY
    root = repo_root()
    if root is not None:
        return str(root / TEMPLATE_DIRECTORY), None
    return DEFAULT_TEMPLATE_REPO, TEMPLATE_DIRECTORY


def parse_assignments(pairs: Sequence[str], cwd: Path) -> dict[str, str]:
    """``key=value`` arguments into cookiecutter's extra context, checked and normalised."""
    context: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep:
            raise IsofeatError(
                f"{pair!r} is not key=value", fix="write e.g. docker_in_docker=yes agents=claude"
            )
        if key not in VARIABLES:
            raise IsofeatError(
                f"unknown template variable {key!r}", fix=f"use one of {', '.join(VARIABLES)}"
            )
        if _JINJA.search(value):
            raise IsofeatError(
                f"{key}: {value!r} contains '{{{{', '{{%' or '{{#', which cookiecutter would run "
                "as a template",
                fix="remove the braces from the value",
            )
        if key == "docker_in_docker" and value.strip().lower() in _YES | _NO:
            value = "yes" if value.strip().lower() in _YES else "no"
        if key == "extra_ca_certs" and value.strip() and not value.strip().startswith(("/", "~")):
            # The hook runs in .devcontainer/; a relative path means the caller's folder.
            value = str((cwd / value.strip()).resolve())
        context[key] = value
    return context


def scaffold(
    project_dir: Path,
    assignments: Sequence[str] = (),
    *,
    no_input: bool = False,
    force: bool = False,
    template: str | None = None,
    cwd: Path | None = None,
    check_features: bool = True,
) -> int:
    """Add ``PROJECT_DIR/.devcontainer/`` with the cookiecutter template; return 0.

    With ``check_features``, asks the registry for the Features the new devcontainer.json
    names (``features_source=oci``) before returning (see :mod:`isofeat.oci_check`).
    """
    cwd = cwd or Path.cwd()
    project = (cwd / project_dir).resolve() if not project_dir.is_absolute() else project_dir
    if not project.is_dir():
        raise IsofeatError(f"{project}: no such folder", fix="give the project's folder")
    target = project / ".devcontainer"
    if target.is_symlink():
        raise IsofeatError(
            f"{target} is a symbolic link; nothing was changed",
            fix="replace the link with a real folder, or remove it",
        )
    if target.exists() and not force:
        present = ", ".join(sorted(p.name for p in target.iterdir())) if target.is_dir() else ""
        raise IsofeatError(
            f"{target} already exists{f' (it holds {present})' if present else ''}; "
            "nothing was changed",
            fix="move it away, or add --force to replace the template's files in it "
            "(other files stay, and the replaced ones are listed)",
        )
    context = parse_assignments(assignments, cwd)
    existed = target.exists()
    if force:
        context["_force"] = "yes"
    source, directory = template_source(template)

    from cookiecutter.exceptions import (
        CookiecutterException,
        FailedHookException,
        OutputDirExistsException,
        RepositoryCloneFailed,
        RepositoryNotFound,
    )
    from cookiecutter.main import cookiecutter

    # Cookiecutter logs a failing hook with a traceback; the hook's ERROR lines are the message.
    logging.getLogger("cookiecutter").addHandler(logging.NullHandler())
    try:
        cookiecutter(
            source,
            directory=directory,
            no_input=no_input,
            extra_context=context,
            output_dir=str(project),
            overwrite_if_exists=force,
            # The template's defaults, not a ~/.cookiecutterrc's default_context.
            default_config=True,
        )
    except EOFError:
        # Cookiecutter asks on stdin; without a terminal the first question ends the run.
        raise IsofeatError(
            "cannot ask the template's questions: stdin is closed or not a terminal",
            fix="pass --no-input and the values as key=value",
        ) from None
    except FailedHookException:
        raise IsofeatError(
            "the template refused these values (the ERROR lines above say which and why); "
            "nothing was written",
            fix="correct the values named above and run again",
        ) from None
    except OutputDirExistsException as err:
        raise IsofeatError(str(err), fix="move .devcontainer/ away, or add --force") from None
    except (RepositoryNotFound, RepositoryCloneFailed) as err:
        raise IsofeatError(
            f"cannot get the template from {source}: {err}",
            fix="pass --template PATH to an isofeat checkout",
        ) from None
    except ValueError as err:
        # Cookiecutter's message for a value that is not one of a choice variable's choices.
        raise IsofeatError(str(err), fix="use one of the choices named") from None
    except CookiecutterException as err:
        raise IsofeatError(f"cookiecutter failed: {err}", fix="see the message above") from None
    if check_features:
        _check_registry_features(target, created=not existed)
    return 0


def registry_features(devcontainer: Path) -> dict[tuple[str, str], list[str]]:
    """The Features ``devcontainer.json`` takes from a registry: ``{(namespace, tag): [ids]}``."""
    import json5

    config = json5.loads((devcontainer / "devcontainer.json").read_text(encoding="utf-8"))
    found: dict[tuple[str, str], list[str]] = {}
    for ref in config.get("features", {}):
        if ref.startswith((".", "/")) or "/" not in ref:
            continue  # a local Feature folder, or not an OCI reference
        if "@" in ref:  # pinned by digest: the manifest is asked for by that digest
            name, _, tag = ref.partition("@")
        elif ":" in ref.rsplit("/", 1)[-1]:
            name, _, tag = ref.rpartition(":")
        else:
            name, tag = ref, "latest"
        namespace, _, feature = name.rpartition("/")
        found.setdefault((namespace, tag), []).append(feature)
    return found


def _check_registry_features(devcontainer: Path, *, created: bool) -> None:
    """Say at once when the Features cannot be resolved, not when `devcontainer up` fails.

    A registry that answers "not found" is an error (and a .devcontainer/ this run created is
    removed again); one that cannot be reached is a warning: it may work later, online.
    """
    import shutil
    import sys

    from isofeat.oci_check import check

    for (namespace, tag), features in registry_features(devcontainer).items():
        problem = check(namespace, tag, features)
        if problem is None:
            continue
        fix = ("isofeat scaffold features_source=local (copies of the Features inside "
               ".devcontainer/, no registry needed)")
        if problem.missing:
            if created:
                shutil.rmtree(devcontainer, ignore_errors=True)
            raise IsofeatError(
                f"the Features cannot be resolved: {problem.message}; `devcontainer up` would "
                f"fail{'. Nothing was written' if created else ''}",
                fix=fix + (" --force" if not created else ""),
            )
        print(f"warning: the Features may not resolve: {problem.message}. If `devcontainer up` "
              f"fails to fetch them, use: {fix}", file=sys.stderr)
        return
