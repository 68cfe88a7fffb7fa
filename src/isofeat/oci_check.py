"""Can the Features a template names be resolved? One manifest request each, with a short timeout.

``features_source=oci`` (the template's default) points at a registry namespace. When nothing
is published there, ``devcontainer up`` fails minutes later, deep in a build log. ``isofeat
scaffold`` asks the registry first, the way the devcontainer CLI does (OCI distribution API,
with an anonymous bearer token when the registry asks for one):

* the registry answers that a Feature does not exist: an error, with the fix;
* the registry cannot be reached or wants a login: a warning (offline now may be online
  later, and a private registry may work with the user's docker login), and scaffolding goes on.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence

TIMEOUT = 4.0
_ACCEPT = ", ".join((
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
))
_CHALLENGE = re.compile(r'(\w+)="([^"]*)"')


class Unresolved(Exception):
    """A Feature that the registry says does not exist (``missing``), or could not be asked."""

    def __init__(self, message: str, *, missing: bool) -> None:
        super().__init__(message)
        self.message = message
        self.missing = missing


def _split(namespace: str) -> tuple[str, str]:
    registry, _, path = namespace.partition("/")
    return registry, path


def _base_url(registry: str) -> str:
    host = registry.rsplit(":", 1)[0] if not registry.startswith("[") else registry
    # Like the devcontainer CLI: plain HTTP for a registry on this machine, HTTPS otherwise.
    scheme = "http" if host in {"localhost", "127.0.0.1", "[::1]"} else "https"
    return f"{scheme}://{registry}"


def _get(url: str, headers: dict[str, str], timeout: float) -> tuple[int, dict[str, str]]:
    request = urllib.request.Request(url, headers=headers, method="GET")  # noqa: S310 (http/s only)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return response.status, dict(response.headers)
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers or {})


def _anonymous_token(challenge: str, timeout: float) -> str | None:
    """A pull token from the realm a ``WWW-Authenticate: Bearer ...`` challenge names."""
    if not challenge.lower().startswith("bearer "):
        return None
    params = dict(_CHALLENGE.findall(challenge))
    realm = params.pop("realm", "")
    if not realm.startswith(("https://", "http://")):
        return None
    url = f"{realm}?{urllib.parse.urlencode(params)}"
    request = urllib.request.Request(url)  # noqa: S310 (the registry's own token service)
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
        data = json.loads(response.read(65536) or b"{}")
    token = data.get("token") or data.get("access_token")
    return str(token) if token else None


def manifest_exists(namespace: str, feature: str, tag: str, timeout: float = TIMEOUT) -> bool:
    """True when ``namespace/feature:tag`` has a manifest; raises :class:`Unresolved`."""
    registry, path = _split(namespace)
    url = f"{_base_url(registry)}/v2/{path}/{feature}/manifests/{tag}"
    ref = f"{namespace}/{feature}:{tag}"
    headers = {"Accept": _ACCEPT}
    try:
        status, answer = _get(url, headers, timeout)
        if status == 401:
            token = _anonymous_token(answer.get("WWW-Authenticate", ""), timeout)
            if token:
                status, answer = _get(url, {**headers, "Authorization": f"Bearer {token}"},
                                      timeout)
    except (OSError, ValueError) as err:  # DNS, refused, timeout, TLS, a bad token answer
        reason = getattr(err, "reason", err)
        raise Unresolved(f"cannot reach {registry} to look up {ref} ({reason})",
                         missing=False) from None
    if 200 <= status < 300:
        return True
    if status == 404:
        raise Unresolved(f"{registry} has no {ref}: nothing is published there", missing=True)
    if status in (401, 403):
        # ghcr.io answers "denied" for a package that does not exist as for a private one.
        raise Unresolved(f"{registry} refused to show {ref} without a login (HTTP {status}): "
                         "it is not published, or private", missing=False)
    raise Unresolved(f"{registry} answered HTTP {status} for {ref}", missing=False)


def check(namespace: str, version: str, features: Sequence[str],
          timeout: float = TIMEOUT) -> Unresolved | None:
    """The first Feature that cannot be resolved, or None when all of them can."""
    for feature in features:
        try:
            manifest_exists(namespace, feature, version, timeout)
        except Unresolved as problem:
            return problem
    return None
