"""``isofeat proxy {render,reload}``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from isofeat import argtypes
from isofeat.commands._options import add_layer_options, layer_defaults
from isofeat.errors import EXIT_OK, IsofeatError


def render(
    files: Sequence[Path],
    defaults: str | None,
    include_global: bool,
    out: Path,
    upstream: str | None,
    no_upstream: Sequence[str],
    allow_clients: Sequence[str],
    max_clients: int,
    as_json: bool,
    environ: Mapping[str, str] = os.environ,
    owner: tuple[int, int] | None = None,
) -> int:
    """Merge the whitelist layers and write ``out/tinyproxy.conf`` and ``out/filter``.

    With upstream credentials, or with ``owner``, the folder is 0700 and its files 0600,
    owned by ``owner`` or by whoever runs this; the proxy must run as that uid.
    """
    from isofeat import proxy_render

    policy, layers, rendered = proxy_render.render_layers(
        files, defaults=defaults, include_global=include_global, environ=environ,
        upstream=upstream, no_upstream=no_upstream, allow_clients=allow_clients,
        max_clients=max_clients,
    )
    if out.exists() and not out.is_dir():
        raise IsofeatError(f"{out}: exists and is not a folder", fix="choose another --out")
    private = rendered.secret or owner is not None
    try:
        proxy_render.write(rendered, out, private=private, owner=owner)
    except PermissionError as err:
        raise IsofeatError(
            f"{out}: cannot give the render to uid:gid {owner}: {err.strerror}",
            fix="run as root to choose --owner, or leave it out and run the proxy container "
            "as your own uid (docker run --user \"$(id -u):$(id -g)\")",
        ) from None
    uid, gid = owner or (os.getuid(), os.getgid())
    summary = {
        "out": str(out),
        "conf": str(out / proxy_render.CONF_NAME),
        "filter": str(out / proxy_render.FILTER_NAME),
        "entries": len(policy.entries),
        "rules": rendered.rule_count,
        "connect_ports": rendered.connect_ports,
        "layers": layers,
        # Who the proxy must run as to read a private render; None: any uid may.
        "proxy_user": f"{uid}:{gid}" if private else None,
    }
    if as_json:
        print(json.dumps(summary))
    else:
        print(
            f"wrote {summary['conf']} and {summary['filter']}: {len(policy.entries)} entries, "
            f"{rendered.rule_count} rules, CONNECT ports {rendered.connect_ports}"
        )
        if private:
            why = "holds upstream credentials" if rendered.secret else "was given an --owner"
            print(f"the config {why}: {out} is 0700 and its files 0600, readable by uid {uid} "
                  f"only; run the proxy as that user (docker run --user {uid}:{gid})",
                  file=sys.stderr)
    return EXIT_OK


def reload(container: str | None, project: str | None, service: str, wait: float) -> int:
    """Make a running proxy re-read its config and filter (see :mod:`isofeat.proxy_reload`)."""
    from isofeat.proxy_reload import reload as reload_proxy

    print(f"reloaded {reload_proxy(container, project, service, wait)}")
    return EXIT_OK


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("proxy", help="render and reload the egress proxy's config")
    verbs = parser.add_subparsers(dest="proxy_verb", metavar="VERB", required=True)

    p = verbs.add_parser(
        "render",
        help="compile whitelists into DIR/tinyproxy.conf and DIR/filter",
        description="Compile the merged whitelist into a tinyproxy config that denies by "
        "default, anchors and escapes every rule, and enforces ports on CONNECT and plain HTTP.",
    )
    add_layer_options(p)
    p.add_argument("--out", type=argtypes.folder, required=True, metavar="DIR")
    p.add_argument(
        "--upstream",
        type=argtypes.text,
        metavar="URL",
        help="send allowed traffic through socks5://HOST:PORT or http://HOST:PORT",
    )
    p.add_argument(
        "--no-upstream",
        metavar="DOMAIN",
        nargs="+",
        action="extend",
        default=[],
        help="domains reached directly, not through --upstream",
    )
    p.add_argument(
        "--allow-client",
        metavar="CIDR",
        nargs="+",
        action="extend",
        default=[],
        help="only these client addresses may use the proxy (default: any)",
    )
    p.add_argument(
        "--max-clients",
        type=int,
        default=100,
        help="connections served at once; more are refused (default 100)",
    )
    p.add_argument(
        "--owner",
        type=argtypes.owner,
        metavar="UID[:GID]",
        help="make DIR 0700 and its files 0600, owned by this uid (needs root); run the proxy "
        "as it. Without it, a config with upstream credentials is private to you",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(
        func=lambda a: render(
            a.whitelist,
            layer_defaults(a.defaults),
            not a.no_global,
            a.out,
            a.upstream,
            a.no_upstream,
            a.allow_client,
            a.max_clients,
            a.json,
            owner=a.owner,
        )
    )

    p = verbs.add_parser(
        "reload",
        help="make a running proxy re-read its config and filter (after `proxy render`)",
        description="Checks the mounted config with the image's own entrypoint, then has "
        "tinyproxy re-read tinyproxy.conf and the filter (SIGUSR1) without a restart and "
        "without touching the sandbox container. A config that fails the checks is not "
        "applied. Render into the folder the proxy has mounted first (or run isofeat init).",
    )
    p.add_argument("--container", type=argtypes.text, help="the proxy container's name or id")
    p.add_argument(
        "--project", type=argtypes.text, help="a Compose project; its proxy service is reloaded"
    )
    p.add_argument(
        "--service", type=argtypes.text, default="proxy", help="the service name (default: proxy)"
    )
    p.add_argument("--wait", type=argtypes.seconds, default=1.0, help=argparse.SUPPRESS)
    p.set_defaults(func=lambda a: reload(a.container, a.project, a.service, a.wait))
