"""Remove the Compose environments that tests made under a folder, even after a failure.

A test that fails halfway leaves its environments behind, and their ``restart:
unless-stopped`` services come back with the engine: the next run then shares the machine
with them (addresses, memory, names). The session's ``docker_client`` fixture calls this
for its own temporary folder at the end, and ``.ci/run`` for every pytest folder before
the tests (``python -m tests.docker.leftovers``), when nothing else may be running; that
also removes whatever carries the tests' own ``isofeat.test`` label.

Only projects whose Compose working folder lies under the given root are touched, with
the ``vsc-*`` images the devcontainer CLI built for them.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

WORKING_DIR = "com.docker.compose.project.working_dir"
PROJECT = "com.docker.compose.project"
#: What tests/docker/conftest.py labels the containers and networks it starts itself with.
TEST_LABEL = "isofeat.test"


def _under(path: str, root: Path) -> bool:
    return Path(path) == root or root in Path(path).parents


def remove_projects_under(client: Any, root: Path) -> list[str]:
    """Remove containers, networks, volumes and ``vsc-*`` images of projects under ``root``.

    Returns the project names removed, sorted.
    """
    from docker.errors import APIError, NotFound

    root = root.resolve()
    projects: set[str] = set()
    images: set[str] = set()
    for container in client.containers.list(all=True, filters={"label": WORKING_DIR}):
        labels = container.labels
        if not _under(labels.get(WORKING_DIR, ""), root):
            continue
        projects.add(labels.get(PROJECT, ""))
        image = container.attrs.get("Config", {}).get("Image", "")
        if image.startswith("vsc-"):
            images.add(image)
        with contextlib.suppress(NotFound, APIError):
            container.remove(force=True, v=True)
    projects.discard("")
    for project in sorted(projects):
        flt = {"label": f"{PROJECT}={project}"}
        for network in client.networks.list(filters=flt):
            with contextlib.suppress(NotFound, APIError):
                network.remove()
        for volume in client.volumes.list(filters=flt):
            with contextlib.suppress(NotFound, APIError):
                volume.remove(force=True)
    for image in sorted(images):
        with contextlib.suppress(NotFound, APIError):  # 409 while another container uses it
            client.images.remove(image)
    return sorted(projects)


def remove_labelled(client: Any, label: str = TEST_LABEL) -> int:
    """Remove every container, network and volume carrying ``label`` (tests' own servers,
    clients and stacks). Only for a machine where no other test run is going on."""
    from docker.errors import APIError, NotFound

    removed = 0
    flt = {"label": label}
    for container in client.containers.list(all=True, filters=flt):
        with contextlib.suppress(NotFound, APIError):
            container.remove(force=True, v=True)
            removed += 1
    for network in client.networks.list(filters=flt):
        with contextlib.suppress(NotFound, APIError):
            network.remove()
            removed += 1
    for volume in client.volumes.list(filters=flt):
        with contextlib.suppress(NotFound, APIError):
            volume.remove(force=True)
            removed += 1
    return removed


def main(argv: list[str]) -> int:
    from docker.client import from_env

    if len(argv) != 1:
        print("usage: python -m tests.docker.leftovers ROOT", file=sys.stderr)
        return 2
    client = from_env(timeout=120)
    removed = remove_projects_under(client, Path(argv[0]))
    others = remove_labelled(client)
    print(f"removed {len(removed)} environment(s) left by earlier test runs under {argv[0]}"
          + (f": {', '.join(removed)}" if removed else "")
          + f", and {others} labelled {TEST_LABEL} container(s), network(s) or volume(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
