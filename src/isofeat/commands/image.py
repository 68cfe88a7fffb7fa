"""``isofeat image build``: the base image (with extra CAs), the proxy and the DinD engine."""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Mapping

from isofeat import argtypes
from isofeat.errors import EXIT_OK

CHOICES = ("base", "proxy", "dind", "broker", "all")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    image = subparsers.add_parser(
        "image",
        help="build isofeat's container images",
        description="Build isofeat's container images.",
    )
    verbs = image.add_subparsers(dest="image_verb", metavar="ACTION", required=True)
    build = verbs.add_parser(
        "build",
        help="build the base, proxy, dind and broker images (reuses up-to-date ones)",
        description="Build the base image (Debian bookworm that trusts your extra CA "
        "certificates), and on it the egress proxy, the Docker-in-Docker engine and the "
        "credential broker. "
        "Up-to-date images are reused; "
        "an image built by another isofeat version, from another recipe or with another CA "
        "set is rebuilt. Progress goes to stderr, the summary to stdout.",
    )
    build.add_argument(
        "target",
        nargs="?",
        choices=CHOICES,
        default="all",
        help="what to build (default: all); the others also build the base if needed",
    )
    cas = build.add_mutually_exclusive_group()
    cas.add_argument(
        "--extra-ca",
        metavar="PATH",
        # Non-empty: an empty value is more likely an unset shell variable than "no CA".
        type=argtypes.text,
        default=None,
        help="PEM file (one or more certificates) or folder of *.crt/*.pem files to trust in "
        "every image (default: $ISOFEAT_EXTRA_CA_CERTS, else keep what the existing base image "
        "trusts); see docs/extra-ca.md",
    )
    cas.add_argument(
        "--no-extra-ca",
        action="store_true",
        help="trust no extra CA (drops those an existing base image trusts)",
    )
    build.add_argument(
        "--rebuild",
        action="store_true",
        help="rebuild the named images without the layer cache even if up to date",
    )
    build.add_argument("--json", action="store_true", dest="as_json", help="summary as JSON")
    build.set_defaults(
        func=lambda a: build_images(
            a.target,
            a.extra_ca,
            no_extra_ca=a.no_extra_ca,
            rebuild=a.rebuild,
            as_json=a.as_json,
        )
    )


def build_images(
    target: str,
    extra_ca_path: str | None,
    *,
    no_extra_ca: bool = False,
    rebuild: bool = False,
    as_json: bool = False,
    environ: Mapping[str, str] = os.environ,
) -> int:
    from isofeat import extra_ca, image_build
    started = time.monotonic()
    # Read the CAs before talking to Docker: a bad --extra-ca is the user's to fix first.
    ca_set = extra_ca.EMPTY if no_extra_ca else extra_ca.from_option(extra_ca_path, environ)
    targets = list(image_build.TARGETS) if target == "all" else [target]
    results = image_build.build(targets, ca_set=ca_set, rebuild=rebuild)
    total = time.monotonic() - started
    if as_json:
        summary = {
            "images": [r.to_json() for r in results],
            "extra_ca_certificates": int(results[0].labels.get(image_build.LABEL_CA_COUNT, 0)),
            "seconds": round(total, 2),
        }
        print(json.dumps(summary, indent=2))
    else:
        for r in results:
            short = r.image_id.removeprefix("sha256:")[:12]
            print(f"{r.action:<7} {' '.join(r.tags)}  {short}  {r.seconds:.1f}s")
        count = int(results[0].labels.get(image_build.LABEL_CA_COUNT, 0))
        print(f"the images trust {count} extra CA certificate(s)")
    return EXIT_OK
