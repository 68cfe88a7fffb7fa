"""Project settings: ``.devcontainer/isofeat.json``, written by the template, read by
``isofeat init`` and ``isofeat task new``.

Standard library only: ``isofeat init`` reads it on every container open.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from isofeat.errors import IsofeatError
from isofeat.layout import SETTINGS_FILE

#: Resource limits of `dev` (and of the DinD engine), per container, when isofeat.json has
#: none. cookiecutter.json and compose.yaml's ${VAR:-default} repeat them; a test compares.
DEFAULT_PIDS_LIMIT = 2048
DEFAULT_MEMORY = "4g"
#: "auto": every CPU of the host but one, at least one (init resolves it on the host).
DEFAULT_CPUS = "auto"
MIN_PIDS_LIMIT = 64
_MEMORY = re.compile(r"([1-9][0-9]*)([kmg])\Z")
_MIN_MEMORY_BYTES = 64 * 2**20


class Settings:
    """Project settings from ``.devcontainer/isofeat.json`` (written by the template)."""

    # A plain class, not a dataclass: importing dataclasses costs init a tenth of its time.
    def __init__(
        self, docker_in_docker: bool = False, upstream: str | None = None,
        no_upstream: tuple[str, ...] = (), copy_to_tasks: tuple[str, ...] = (),
        allow_host_access: bool = False, pids_limit: int = DEFAULT_PIDS_LIMIT,
        memory: str = DEFAULT_MEMORY, cpus: str = DEFAULT_CPUS,
    ) -> None:
        self.docker_in_docker = docker_in_docker
        self.upstream = upstream
        self.no_upstream = no_upstream
        self.copy_to_tasks = copy_to_tasks  # untracked files `isofeat task new` copies
        # The user accepts that the sandbox reaches the host (Docker Desktop): doctor passes.
        self.allow_host_access = allow_host_access
        self.pids_limit = pids_limit
        self.memory = memory  # Docker's notation: 4g, 512m
        self.cpus = cpus  # "auto" or a number of CPUs as text ("1.5")

    def __repr__(self) -> str:
        return f"Settings({self.docker_in_docker!r}, {self.upstream!r}, {self.no_upstream!r})"


def read_settings(devcontainer: Path) -> Settings:
    path = devcontainer / SETTINGS_FILE
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Settings()
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as err:
        raise IsofeatError(
            f"{path}:{err.lineno}: not valid JSON: {err.msg}",
            fix="fix the JSON syntax (no comments or trailing commas in this file)",
        ) from None
    if not isinstance(data, dict):
        raise IsofeatError(
            f"{path}:1: expected a JSON object", fix='write {} (or {"upstream": null})'
        )
    known = {"dockerInDocker", "upstream", "noUpstream", "extraCaCerts", "copyToTasks"}
    known |= {"allowHostAccess", "limits"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise IsofeatError(
            f"{path}: unknown setting(s) {', '.join(unknown)}",
            fix=f"use only {', '.join(sorted(known))}",
        )
    dind = data.get("dockerInDocker", False)
    upstream = data.get("upstream")
    no_upstream = data.get("noUpstream", [])
    if not isinstance(dind, bool):
        raise IsofeatError(
            f"{path}: dockerInDocker must be true or false", fix="write true or false"
        )
    if upstream is not None and not isinstance(upstream, str):
        raise IsofeatError(f"{path}: upstream must be a string or null",
                           fix='write "socks5://HOST:PORT", "http://HOST:PORT" or null')
    if not isinstance(no_upstream, list) or not all(isinstance(d, str) for d in no_upstream):
        raise IsofeatError(f"{path}: noUpstream must be a list of domains",
                           fix='write ["internal.example.com"]')
    copy = data.get("copyToTasks", [])
    if not isinstance(copy, list) or not all(isinstance(c, str) for c in copy):
        raise IsofeatError(f"{path}: copyToTasks must be a list of paths", fix='write [".env"]')
    allow_host = data.get("allowHostAccess", False)
    if not isinstance(allow_host, bool):
        raise IsofeatError(f"{path}: allowHostAccess must be true or false",
                           fix="write false (the default), or true to accept that the sandbox "
                               "reaches the host (docs/threat-model.md)")
    pids, memory, cpus = _read_limits(path, data.get("limits", {}))
    return Settings(dind, upstream or None, tuple(no_upstream), tuple(copy),
                    allow_host_access=allow_host, pids_limit=pids, memory=memory, cpus=cpus)


def _read_limits(path: Path, limits: object) -> tuple[int, str, str]:
    """``"limits": {"pids": 2048, "memory": "4g", "cpus": "auto"}``, each optional."""
    fix = 'write e.g. "limits": {"pids": 2048, "memory": "4g", "cpus": "auto"}'
    if not isinstance(limits, dict):
        raise IsofeatError(f"{path}: limits must be an object", fix=fix)
    unknown = sorted(set(limits) - {"pids", "memory", "cpus"})
    if unknown:
        raise IsofeatError(f"{path}: unknown limit(s) {', '.join(unknown)}",
                           fix="use only pids, memory and cpus")
    pids = limits.get("pids", DEFAULT_PIDS_LIMIT)
    if isinstance(pids, bool) or not isinstance(pids, int) or pids < MIN_PIDS_LIMIT:
        raise IsofeatError(f"{path}: limits.pids must be a whole number of at least "
                           f"{MIN_PIDS_LIMIT}, not {pids!r}", fix=fix)
    memory = limits.get("memory", DEFAULT_MEMORY)
    match = _MEMORY.match(memory) if isinstance(memory, str) else None
    if match is None or memory_bytes(memory) < _MIN_MEMORY_BYTES:
        raise IsofeatError(f"{path}: limits.memory must be like 4g or 512m (at least 64m), "
                           f"not {memory!r}", fix=fix)
    cpus = limits.get("cpus", DEFAULT_CPUS)
    if cpus != "auto" and (isinstance(cpus, bool) or not isinstance(cpus, (int, float))
                           or not 0.1 <= cpus <= 1024):
        raise IsofeatError(f'{path}: limits.cpus must be "auto" or a number from 0.1, '
                           f"not {cpus!r}", fix=fix)
    return pids, str(memory), str(cpus)


def memory_bytes(memory: str) -> int:
    """``4g`` -> bytes (Docker's binary units)."""
    match = _MEMORY.match(memory)
    if match is None:
        raise ValueError(memory)
    return int(match.group(1)) << {"k": 10, "m": 20, "g": 30}[match.group(2)]


def resolve_cpus(cpus: str, host_cpus: int | None) -> str:
    """What compose gets: "auto" is every CPU of this host but one (at least one); a number is
    capped at the host's count, because Docker refuses a container more CPUs than exist."""
    count = max(1, host_cpus or 1)
    if cpus == "auto":
        return str(max(1, count - 1))
    value = min(float(cpus), float(count))
    return f"{value:g}"
