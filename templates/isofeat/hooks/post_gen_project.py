#!/usr/bin/env python3
"""Finish the new ``.devcontainer/`` (the current folder): the parts Jinja cannot render.

- the extra CA certificates, embedded as base64 in devcontainer.json;
- with Docker-in-Docker, compose.dind.yaml, copied from the template repository;
- with local Features, a copy of features/src of the template repository in ./features/, and
  for the isofeat Feature a wheel of the package, built from the checkout (PEP 517) or taken
  from $ISOFEAT_WHEEL_DIR, so that it installs without a package index that has isofeat.

Every value was checked by pre_gen_project.py. A failure here exits 1, and cookiecutter then
removes the folder it created.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# The answers, as JSON inside a raw string (see pre_gen_project.py).
CONTEXT = json.loads(r'''{{ cookiecutter | tojson }}''')  # fmt: skip
EXTRA_CA: str = CONTEXT["extra_ca_certs"]
DIND = CONTEXT["docker_in_docker"] == "yes"
LOCAL = CONTEXT["features_source"] == "local"
# Building the Dev Container Template (scripts/build-devcontainer-template): no advice to print.
QUIET = CONTEXT["_devcontainer_template"] == "yes"
TOKEN = "__ISOFEAT_EXTRA_CA_B64__"  # noqa: S105 (a placeholder in devcontainer.json, no secret)
PEM = re.compile(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", re.DOTALL)
HERE = Path.cwd()


def template_dir(given: str) -> Path:
    """The template's folder as an absolute path (cookiecutter's ``_repo_dir`` is as typed).

    ``cookiecutter ../isofeat/templates/isofeat`` passes a path relative to the folder it was
    started in, but hooks run in the new ``.devcontainer/``. Cookiecutter itself runs hooks from
    inside the template folder (its working directory, which Linux shows as /proc/PPID/cwd);
    the shell's $PWD is the folder it was started in.
    """
    path = Path(given).expanduser()
    if path.is_absolute():
        return path
    candidates = [Path(f"/proc/{os.getppid()}/cwd")]
    if os.environ.get("PWD"):
        candidates.append(Path(os.environ["PWD"]) / path)
    for candidate in candidates:
        try:
            resolved = candidate.resolve(strict=True)
        except OSError:
            continue
        if (resolved / "cookiecutter.json").is_file() and (resolved / "hooks").is_dir():
            return resolved
    return path.resolve()


REPO_DIR = template_dir(CONTEXT["_repo_dir"])


def embed_ca(value: str) -> None:
    path = Path(os.path.expanduser(value.strip()))
    files = (
        sorted(p for p in path.iterdir() if p.suffix in {".crt", ".pem"})
        if path.is_dir()
        else [path]
    )
    blocks: list[str] = []
    for file in files:
        for block in PEM.findall(file.read_text(encoding="ascii", errors="strict")):
            if block not in blocks:
                blocks.append(block)
    pem = "\n".join(blocks) + "\n"
    encoded = base64.b64encode(pem.encode("ascii")).decode("ascii")
    config = HERE / "devcontainer.json"
    text = config.read_text(encoding="utf-8")
    if text.count(TOKEN) != 1:
        raise SystemExit(f"ERROR: {config}: expected one {TOKEN} placeholder")
    config.write_text(text.replace(TOKEN, encoded), encoding="utf-8")
    print(f"Embedded {len(blocks)} CA certificate(s) from {path} for the egress-proxy Feature.")


def copy_dind() -> None:
    fragment = REPO_DIR.parent / "compose-fragments" / "compose.dind.yaml"
    shutil.copyfile(fragment, HERE / "compose.dind.yaml")


def _wheel_in(folder: Path) -> Path | None:
    wheels = sorted(folder.glob("isofeat-*.whl")) if folder.is_dir() else []
    return wheels[-1] if wheels else None


def _fail(problem: str, fix: str, details: str = "") -> None:
    if details:
        print(details.rstrip(), file=sys.stderr)
    raise SystemExit(f"ERROR: features_source: {problem}. Fix: {fix}")


def build_wheel(repo: Path, dest: Path) -> Path:
    """Build isofeat's wheel from ``repo`` into ``dest`` the standard way (PEP 517).

    pip's isolated build installs what pyproject.toml's [build-system] requires (from the
    index, or pip's cache), so it does not depend on what the calling venv happens to hold.
    It builds from a copy: an in-tree build leaves build/ and *.egg-info in the checkout.
    """
    with tempfile.TemporaryDirectory(prefix="isofeat-wheel-") as tmp:
        tree = Path(tmp) / "isofeat"
        tree.mkdir()
        for name in ("pyproject.toml", "README.md", "LICENSE"):
            if (repo / name).is_file():
                shutil.copy2(repo / name, tree / name)
        shutil.copytree(
            repo / "src",
            tree / "src",
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"),
        )
        # A fixed timestamp makes the wheel byte-identical while the code does not change, so
        # Docker's layer cache for the isofeat Feature stays valid between bakes.
        env = {**os.environ, "SOURCE_DATE_EPOCH": "315532800", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
        result = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(dest),
             str(tree)],
            capture_output=True, text=True, check=False, env=env,
        )  # fmt: skip
    wheel = _wheel_in(dest)
    if result.returncode != 0 or wheel is None:
        _fail(
            f"local needs a wheel of isofeat for the isofeat Feature, and building one from "
            f"{repo} failed (pip wheel, exit {result.returncode}; its output is above)",
            "let pip reach PyPI for the build requirements in pyproject.toml (setuptools, "
            "wheel), or set ISOFEAT_WHEEL_DIR to a folder holding an isofeat-*.whl",
            result.stdout + result.stderr,
        )
    assert wheel is not None  # for the type checker: _fail exited
    return wheel


def copy_features() -> None:
    repo = REPO_DIR.parent.parent
    src = repo / "features" / "src"
    dest = HERE / "features"
    if dest.exists():
        shutil.rmtree(dest)
    # Never a wheel left behind in the checkout (features/src/isofeat/wheels, dist/): it may
    # be older than the code. The wheel is built now, or given on purpose (ISOFEAT_WHEEL_DIR).
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "wheels"))
    wheels = dest / "isofeat" / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    given = os.environ.get("ISOFEAT_WHEEL_DIR", "").strip()
    if given:
        wheel = _wheel_in(Path(given).expanduser())
        if wheel is None:
            _fail(
                f"ISOFEAT_WHEEL_DIR={given} holds no isofeat-*.whl",
                "build one there (pip wheel --no-deps -w DIR <isofeat checkout>), or unset "
                "ISOFEAT_WHEEL_DIR to build it now",
            )
        assert wheel is not None
        shutil.copy2(wheel, wheels / wheel.name)
        print(f"Copied the Features into {dest}, with {wheel.name} from {given}.")
        return
    wheel = build_wheel(repo, wheels)
    print(f"Copied the Features into {dest} and built {wheel.name} from {repo}.")


def main() -> int:
    if EXTRA_CA.strip():
        embed_ca(EXTRA_CA)
    if DIND:
        copy_dind()
    if LOCAL:
        copy_features()
    if not QUIET:
        print(
            f"Added {HERE}. Next: install isofeat on this computer (pipx install isofeat), "
            "then open the folder in VS Code or a JetBrains IDE, or run: "
            "devcontainer up --workspace-folder ."
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
