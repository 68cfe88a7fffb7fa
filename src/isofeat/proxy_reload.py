"""Reload a running proxy's config in place, through the image's own checks.

The Docker SDK is untyped: the container objects are ``Any`` here, and this module is the
only place the reload talks to the engine.
"""

from __future__ import annotations

import time
from typing import Any

from isofeat.errors import EXIT_DENIED, IsofeatError

#: The proxy image's entrypoint; ``--reload`` checks the mounted config, then signals tinyproxy.
ENTRYPOINT = "/usr/local/lib/isofeat/proxy-entrypoint"


def find_container(container: str | None, project: str | None, service: str) -> Any:
    """The proxy container: by name or id, or the one ``service`` of a Compose project."""
    import docker

    client = docker.from_env()
    if container:
        try:
            return client.containers.get(container)
        except docker.errors.NotFound:
            raise IsofeatError(f"no container {container!r}", fix="see `docker ps`") from None
    if not project:
        raise IsofeatError("say which proxy to reload", fix="pass --container NAME or --project P")
    # Compose v1 and v2 name containers differently; the labels are the same in both.
    found = client.containers.list(
        filters={
            "label": [
                f"com.docker.compose.project={project}",
                f"com.docker.compose.service={service}",
            ]
        }
    )
    if len(found) != 1:
        raise IsofeatError(
            f"expected one running {service!r} container in project {project!r}, "
            f"found {len(found)}",
            fix="check `docker compose -p PROJECT ps`",
        )
    return found[0]


def reload(container: str | None, project: str | None, service: str, wait: float) -> str:
    """Make a running proxy re-read its config and filter, after checking them; its name.

    The image's entrypoint validates the mounted config exactly as at start (deny by default,
    ERE, URL filtering, a non-empty filter of valid, anchored-length rules) and only then
    sends SIGUSR1, on which tinyproxy re-reads both in place. A config that fails the checks
    is not applied: the proxy keeps its previous rules, and this raises (exit 1).
    """
    target = find_container(container, project, service)
    name: str = target.name
    # As the container's own user (no `user=`): that is who can read a private render, and
    # who may signal tinyproxy (compose runs it as ISOFEAT_PROXY_USER, not as `tinyproxy`).
    code, output = target.exec_run([ENTRYPOINT, "--reload"])
    text = output.decode("utf-8", "replace").strip()
    if code != 0:
        raise IsofeatError(f"proxy {name} refused the new config and keeps its previous rules:",
                           lines=text.splitlines(), code=EXIT_DENIED)
    time.sleep(wait)
    target.reload()
    if target.status != "running":
        tail = target.logs(tail=5).decode("utf-8", "replace")
        raise IsofeatError(f"proxy {name} stopped after reload ({target.status}); no traffic "
                           "passes:", lines=tail.splitlines(), code=EXIT_DENIED)
    return name
