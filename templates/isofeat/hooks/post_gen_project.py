#!/usr/bin/env python3
"""Finish the new ``.devcontainer/`` (the current folder): the parts Jinja cannot render.

- the extra CA certificates, embedded as base64 in devcontainer.json;
- with Docker-in-Docker, compose.dind.yaml, copied from the template repository;
- with local Features, a copy of features/src of the template repository in ./features/, and
  for the isofeat Feature a wheel of the package (copied, else built) so it installs offline.

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
from pathlib import Path

# The answers, as JSON inside a raw string (see pre_gen_project.py).
CONTEXT = json.loads(r'''{{ cookiecutter | tojson }}''')  # fmt: skip
EXTRA_CA: str = CONTEXT["extra_ca_certs"]
DIND = CONTEXT["docker_in_docker"] == "yes"
LOCAL = CONTEXT["features_source"] == "local"
REPO_DIR = Path(CONTEXT["_repo_dir"])
# Building the Dev Container Template (scripts/build-devcontainer-template): no advice to print.
QUIET = CONTEXT["_devcontainer_template"] == "yes"
TOKEN = "__ISOFEAT_EXTRA_CA_B64__"  # noqa: S105 (a placeholder in devcontainer.json, no secret)
PEM = re.compile(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", re.DOTALL)
HERE = Path.cwd()


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


def copy_features() -> None:
    src = REPO_DIR.parent.parent / "features" / "src"
    dest = HERE / "features"
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    wheels = dest / "isofeat" / "wheels"
    if _wheel_in(wheels):
        print(f"Copied the Features and {_wheel_in(wheels).name} into {dest}.")
        return
    repo = REPO_DIR.parent.parent
    built = _wheel_in(repo / "dist")
    wheels.mkdir(parents=True, exist_ok=True)
    if built is not None:
        shutil.copy2(built, wheels / built.name)
        print(f"Copied the Features into {dest}, with {built.name} from {repo / 'dist'}.")
        return
    # Best effort: without a wheel the Feature installs isofeat from PyPI (its source=auto).
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(wheels),
            str(repo),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode == 0 and _wheel_in(wheels):
        print(f"Copied the Features into {dest} and built {_wheel_in(wheels).name}.")
    else:
        print(
            f"NOTE: no isofeat wheel in {wheels} (building one failed); the isofeat Feature "
            "will install isofeat from PyPI when the container is built.",
            file=sys.stderr,
        )


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
