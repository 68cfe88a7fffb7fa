#!/usr/bin/env python3
"""Check every answer before cookiecutter writes a single file.

Cookiecutter runs this in the new ``.devcontainer/`` folder after creating it (empty) and
before rendering anything; on exit 1 it removes the folder again if it created it. So a bad
answer leaves the project exactly as it was.

Values arrive through ``| tojson`` (see CONTEXT) and are only ever treated as data. Each
problem is printed as one ``ERROR: <variable>: <problem>. Fix: <how>`` line on stderr. The
whitelist lines go through isofeat's own whitelist parser when isofeat is importable (it is,
under ``isofeat scaffold``), else through a strict pattern that accepts a subset of it.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import sys
from pathlib import Path

# The answers, as JSON inside a raw ''' string: Jinja's tojson writes every ' as \u0027, so no
# value can end the string, and the file is valid Python before and after rendering.
CONTEXT = json.loads(r'''{{ cookiecutter | tojson }}''')  # fmt: skip
# Every variable of cookiecutter.json, answered: that file is their one list.
VALUES = CONTEXT
OUTPUT_DIR = Path(CONTEXT["_output_dir"])


# isofeat.agents.AGENTS is the table; the hook runs where isofeat may not be importable, so it
# keeps the names, and tests/unit/test_layout.py compares them with every other copy.
AGENTS = ("claude", "codex", "gemini")
FEATURES = ("sandbox-user", "egress-proxy", "ai-agents", "agent-team", "isofeat")
# What the template writes; an existing file of these names is what "force" replaces.
GENERATED = (
    "devcontainer.json",
    "compose.yaml",
    "compose.dind.yaml",
    "whitelist.txt",
    "whitelist-dind.txt",
    "isofeat.json",
    ".env.example",
    ".gitignore",
    "compose.override.example.yaml",
    "README.md",
    "features",
)

# A display name: letters, digits, spaces and . _ + -, starting with a letter or digit. This
# rules out quotes, $(), backticks, line breaks, slashes (../) and a leading '-'.
NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9 ._+-]{0,62}[A-Za-z0-9._+-])?\Z")
# Docker's image reference grammar (distribution/reference), without uppercase repositories.
_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*(?::[0-9]+)?)"
_PATH_PART = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_NAME = rf"(?:{_DOMAIN}/)?{_PATH_PART}(?:/{_PATH_PART})*"
_TAG = r"(?::[\w][\w.-]{0,127})?"
_DIGEST = r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?"
IMAGE = re.compile(_NAME + _TAG + _DIGEST + r"\Z")
NAMESPACE = re.compile(rf"{_NAME}\Z")
VERSION = re.compile(r"(?:[0-9]+(?:\.[0-9]+){0,2}|latest)\Z")
# Fallback whitelist entry when isofeat is not importable: a host name, optionally *. and :port.
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
STRICT_ENTRY = re.compile(
    r"!?(?:\*\.)?" + _LABEL + r"(?:\." + _LABEL + r")+(?::[1-9][0-9]{0,4})?\Z"
)
HOST = re.compile(rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9A-Fa-f:.]+\])\Z")
PEM = re.compile(r"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", re.DOTALL)

errors: list[str] = []


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


def error(variable: str, problem: str, fix: str) -> None:
    errors.append(f"ERROR: {variable}: {problem}. Fix: {fix}")


def text(variable: str) -> str:
    value = VALUES[variable]
    if not isinstance(value, str):
        error(variable, f"expected text, got {value!r}", f"pass {variable} as a string")
        return ""
    return value


def items(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def slug(value: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", value.lower()).strip("-")[:64] or "my-project"


def check_choice(variable: str, choices: tuple[str, ...]) -> None:
    value = text(variable)
    if value not in choices:
        error(
            variable, f"{value!r} is not one of {', '.join(choices)}", f"use {' or '.join(choices)}"
        )


def check_name() -> None:
    value = text("project_name")
    if value and not NAME.match(value):
        error(
            "project_name",
            f"{value!r} is not a plain name (letters, digits, spaces and . _ + -, at most 64, "
            "starting with a letter or digit)",
            f"use project_name={slug(value)}, or leave it empty for the folder's name",
        )


def check_image() -> None:
    value = text("base_image")
    if not IMAGE.match(value):
        error(
            "base_image",
            f"{value!r} is not a Docker image reference",
            "write it like isofeat/base:bookworm or debian:bookworm-slim",
        )


def check_agents() -> None:
    value = text("agents").strip().lower()
    if value in {"", "none"}:
        return
    unknown = [a for a in items(value) if a not in AGENTS]
    if unknown or not items(value):
        error(
            "agents",
            f"unknown agent(s) {', '.join(repr(a) for a in unknown) or repr(value)}",
            f"list some of {', '.join(AGENTS)} separated by commas, or write none",
        )


def _whitelist_problem(entry: str) -> str | None:
    """None when ``entry`` is a valid whitelist line, else the reason and the fix."""
    if any(ch.isspace() for ch in entry) or "#" in entry:
        return (
            "spaces, line breaks and '#' cannot be part of an entry; separate entries with commas"
        )
    try:
        from isofeat.whitelist import LineError, Source, parse_line
    except ImportError:
        if STRICT_ENTRY.match(entry.lower()):
            return None
        return (
            "not a host name (write example.com, *.example.com or example.com:8443; "
            "install isofeat for the full whitelist language)"
        )
    try:
        parse_line(entry, Source("extra_whitelist", 1))
    except LineError as err:
        return f"{err.reason}; {err.fix}"
    return None


def check_whitelist() -> None:
    for entry in items(text("extra_whitelist")):
        problem = _whitelist_problem(entry)
        if problem:
            error("extra_whitelist", f"bad entry {entry!r}", problem)


def check_upstream() -> None:
    value = text("upstream_proxy").strip()
    no_upstream = items(text("no_upstream"))
    if not value:
        if no_upstream:
            error(
                "no_upstream",
                "is set but upstream_proxy is empty",
                "set upstream_proxy or clear no_upstream",
            )
        return
    match = re.fullmatch(r"(socks5|socks4|http)://(?P<rest>[^/?#]*)/?", value)
    if match is None:
        error(
            "upstream_proxy",
            f"{value!r} is not socks5://HOST:PORT, socks4://HOST:PORT or http://HOST:PORT",
            "write it like socks5://proxy.example.com:1080, or leave it empty",
        )
    else:
        rest = match.group("rest")
        if "@" in rest:
            error(
                "upstream_proxy",
                "holds credentials, which would be committed in isofeat.json and readable by "
                "the agent",
                "use a proxy that needs no credentials from the container, or leave it empty",
            )
        else:
            host, _, port = rest.rpartition(":")
            if not HOST.match(host.lower()) or not (port.isdigit() and 1 <= int(port) <= 65535):
                error(
                    "upstream_proxy",
                    f"{value!r} needs a host and a port from 1 to 65535",
                    "write it like socks5://proxy.example.com:1080",
                )
    for domain in no_upstream:
        bare = re.sub(r"^(?:\*\.|\.)", "", domain)
        problem = _whitelist_problem(bare)
        if problem or ":" in bare or bare.startswith("!"):
            error(
                "no_upstream",
                f"bad domain {domain!r}",
                problem or "write a domain without a port, e.g. .corp.example.com",
            )


def _certificates(path: Path) -> list[bytes]:
    """DER bytes of every certificate in a PEM file or a folder of .crt/.pem files."""
    try:
        from isofeat.errors import IsofeatError
        from isofeat.extra_ca import load
    except ImportError:
        files = (
            sorted(p for p in path.iterdir() if p.suffix in {".crt", ".pem"})
            if path.is_dir()
            else [path]
        )
        found = []
        for file in files:
            for body in PEM.findall(file.read_text(encoding="ascii", errors="replace")):
                found.append(base64.b64decode("".join(body.split()), validate=True))
        if not found:
            raise ValueError(
                f"{path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
            ) from None
        return found
    try:
        return [cert.der for cert in load(path).certificates]
    except IsofeatError as err:
        raise ValueError(err.message) from None


def check_ca() -> None:
    value = text("extra_ca_certs").strip()
    if not value:
        return
    if not (value.startswith(("/", "~/"))):
        error(
            "extra_ca_certs",
            f"{value!r} is not an absolute path",
            "give the full path, e.g. /usr/local/share/ca-certificates/corp.crt",
        )
        return
    path = Path(os.path.expanduser(value))
    if not path.exists():
        error(
            "extra_ca_certs",
            f"{value} does not exist",
            "give an existing PEM file or folder, or leave it empty",
        )
        return
    try:
        if not _certificates(path):
            raise ValueError(f"{value} holds no certificate")
    except (ValueError, binascii.Error, OSError) as err:
        error(
            "extra_ca_certs",
            str(err),
            "give a PEM file (or folder of .crt/.pem files) with CA certificates",
        )


def check_features() -> None:
    source = text("features_source")
    check_choice("features_source", ("oci", "local"))
    if not NAMESPACE.match(text("features_oci_namespace")):
        error(
            "features_oci_namespace",
            f"{VALUES['features_oci_namespace']!r} is not a registry namespace",
            "write it like ghcr.io/isofeat/features",
        )
    if not VERSION.match(text("features_version")):
        error(
            "features_version",
            f"{VALUES['features_version']!r} is not a version tag",
            "write 1, 1.2, 1.2.3 or latest",
        )
    if source == "local":
        src = REPO_DIR.parent.parent / "features" / "src"
        missing = [f for f in FEATURES if not (src / f / "devcontainer-feature.json").is_file()]
        if missing:
            error(
                "features_source",
                f"local needs the Features in {src}, and {', '.join(missing)} are missing there",
                "apply the template from a full isofeat checkout, or use features_source=oci",
            )


def check_dind() -> None:
    check_choice("docker_in_docker", ("no", "yes"))
    if VALUES["docker_in_docker"] == "yes":
        fragment = REPO_DIR.parent / "compose-fragments" / "compose.dind.yaml"
        if not fragment.is_file():
            error(
                "docker_in_docker",
                f"yes needs {fragment}, which this copy of the template lacks",
                "update the isofeat checkout, or use docker_in_docker=no",
            )


def check_limits() -> None:
    """The same rules as isofeat init's reading of isofeat.json "limits" (isofeat.settings)."""
    pids = text("pids_limit").strip()
    if not (pids.isdigit() and 64 <= int(pids) <= 4_194_304):
        error("pids_limit", f"{pids!r} is not a whole number from 64", "write e.g. 2048")
    memory = text("mem_limit").strip().lower()
    match = re.fullmatch(r"([1-9][0-9]*)([kmg])", memory)
    if match is None or int(match.group(1)) << {"k": 10, "m": 20, "g": 30}[match.group(2)] < (
        64 << 20
    ):
        error("mem_limit", f"{memory!r} is not a memory size of at least 64m",
              "write it like 4g or 512m")
    cpus = text("cpus").strip().lower()
    if cpus != "auto" and not (
        re.fullmatch(r"[0-9]+(\.[0-9]+)?", cpus) and 0.1 <= float(cpus) <= 1024
    ):
        error("cpus", f"{cpus!r} is not a number of CPUs", "write e.g. 2 or 1.5, or auto")


def check_target() -> None:
    if VALUES["__devcontainer_dir"] != ".devcontainer":
        error("__devcontainer_dir", "must stay .devcontainer", "do not override it")
        return
    here = Path.cwd()
    existing = sorted(p.name for p in here.iterdir())
    if not existing:
        return
    clash = [name for name in existing if name in GENERATED]
    if VALUES["_force"] != "yes":
        error(
            ".devcontainer",
            f"{here} already exists and holds {', '.join(existing)}; nothing was changed",
            "move it away first, or re-run with --overwrite-if-exists and _force=yes "
            "(isofeat scaffold --force) to replace "
            + (", ".join(clash) if clash else "nothing (no file of the template's names is there)"),
        )
    elif clash:
        print(f"WARNING: _force=yes: replacing {', '.join(clash)} in {here}", file=sys.stderr)


def main() -> int:
    check_target()
    check_name()
    check_image()
    check_agents()
    check_dind()
    check_whitelist()
    check_upstream()
    check_ca()
    check_features()
    check_limits()
    check_choice("_force", ("no", "yes"))
    check_choice("_devcontainer_template", ("no", "yes"))
    for line in errors:
        print(line, file=sys.stderr)
    if errors:
        print(f"Nothing was written to {OUTPUT_DIR}.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
