"""Build isofeat's images: the base image (Debian bookworm + extra CAs) and the egress proxy.

Image chain::

    root image      debian:bookworm-slim (present or pullable), else isofeat/rootfs:bookworm
                    made here with debootstrap (machines without any container registry)
    base image      isofeat/base:bookworm: trusts the user's extra CA certificates
    proxy image     isofeat/proxy:<version> (+ :latest, and the same image as
                    isofeat/dind-proxy): Debian's tinyproxy, non-root, fail-closed entrypoint
    dind image      isofeat/dind:<version> (+ :latest): Debian's docker.io as a rootless
                    Docker-in-Docker engine (docs/docker-in-docker.md)
    broker image    isofeat/broker:<version> (+ :latest): mitmproxy and the addon that puts
                    the user's credentials into requests to bound hosts (docs/secrets.md)

Each image carries labels (isofeat version, hash of its recipe folder, hash of the CA set,
id of its parent) so that an image built from another recipe or CA set is rebuilt and an
up-to-date one is reused in well under a second.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from isofeat import __version__, extra_ca
from isofeat.errors import IsofeatError
from isofeat.layout import (  # re-exported: tests and commands use image_build's names
    BASE_IMAGE,
    BROKER_IMAGE,
    BROKER_REPOSITORY,
    DIND_IMAGE,
    DIND_PROXY_REPOSITORY,
    DIND_REPOSITORY,
    PROXY_REPOSITORY,
)

if TYPE_CHECKING:
    from docker.client import DockerClient

TARGETS = ("base", "proxy", "dind", "broker")
ROOT_PULL_IMAGE = "debian:bookworm-slim"
ROOTFS_IMAGE = "isofeat/rootfs:bookworm"
PROXY_REPOSITORIES = (PROXY_REPOSITORY, DIND_PROXY_REPOSITORY)

# Where the base Dockerfile puts the extra CAs (one certificate per .crt file).
CA_FOLDER_IN_IMAGE = "/usr/local/share/ca-certificates/isofeat"

LABEL_VERSION = "io.isofeat.version"
LABEL_RECIPE = "io.isofeat.recipe-sha256"
LABEL_CA = "io.isofeat.ca-sha256"
LABEL_CA_COUNT = "io.isofeat.ca-count"
LABEL_ROOT = "io.isofeat.root-image"
LABEL_BASE_ID = "io.isofeat.base-id"

# A pull that hangs (a registry that accepts TCP but never answers) must not stall CI:
# this is the socket read timeout of the client used only for the pull.
PULL_TIMEOUT_SECONDS = 60
# Builds print progress often, but a silent RUN step (a slow apt mirror) can be quiet for a
# while; the default 60 s read timeout would abort a healthy build.
BUILD_TIMEOUT_SECONDS = 1800
ROOTFS_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

Log = Callable[[str], None]
# The legacy builder colours a RUN step's stderr; our log lines are plain text.
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclass
class ImageResult:
    """What happened to one image."""

    target: str
    tags: tuple[str, ...]
    image_id: str
    action: str  # "built" or "reused"
    seconds: float
    labels: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "tags": list(self.tags),
            "id": self.image_id,
            "action": self.action,
            "seconds": round(self.seconds, 2),
            "labels": self.labels,
        }


def docker_client(timeout: int = BUILD_TIMEOUT_SECONDS) -> DockerClient:
    """A docker SDK client that answers, or an :class:`IsofeatError` saying how to get one."""
    from docker.client import from_env
    from docker.errors import DockerException

    try:
        client = from_env(timeout=timeout)
        client.ping()
    except DockerException as err:
        where = os.environ.get("DOCKER_HOST", "the default socket")
        raise IsofeatError(
            f"cannot reach the Docker engine at {where}: {err}",
            fix="start Docker (Docker Desktop, or `dockerd` as root; scripts/bootstrap does it), "
            "or point DOCKER_HOST at a running engine",
        ) from err
    return client


def recipe_dir(target: str) -> Path:
    """The folder shipped as package data that holds ``target``'s Dockerfile."""
    return Path(str(resources.files("isofeat") / "images" / target))


def recipe_sha256(target: str) -> str:
    """Hash of every file in the recipe folder, so that any edit triggers a rebuild."""
    folder = recipe_dir(target)
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if "__pycache__" in path.parts:
            continue
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _inspect(client: DockerClient, ref: str) -> dict[str, Any] | None:
    from docker.errors import ImageNotFound

    try:
        attrs: dict[str, Any] = client.api.inspect_image(ref)
    except ImageNotFound:
        return None
    return attrs


def _labels(attrs: Mapping[str, Any]) -> dict[str, str]:
    return dict((attrs.get("Config") or {}).get("Labels") or {})


def _up_to_date(attrs: Mapping[str, Any] | None, wanted: Mapping[str, str]) -> bool:
    if attrs is None:
        return False
    have = _labels(attrs)
    return all(have.get(k) == v for k, v in wanted.items())


# --- root image -----------------------------------------------------------------------


def ensure_root_image(client: DockerClient, log: Log = _stderr) -> str:
    """The image the base builds FROM: pulled Debian where a registry answers, else debootstrap.

    Order: a local ``debian:bookworm-slim``, then a local ``isofeat/rootfs:bookworm`` (made
    earlier on this machine), then a pull, then debootstrap. On a laptop with internet the
    pull succeeds and nothing is bootstrapped.
    """
    for ref in (ROOT_PULL_IMAGE, ROOTFS_IMAGE):
        if _inspect(client, ref) is not None:
            return ref
    if _try_pull(ROOT_PULL_IMAGE, log):
        return ROOT_PULL_IMAGE
    build_rootfs(client, log)
    return ROOTFS_IMAGE


def _try_pull(ref: str, log: Log) -> bool:
    from docker.client import from_env
    from docker.errors import DockerException
    from requests.exceptions import RequestException

    repository, tag = ref.rsplit(":", 1)
    log(f"[root] pulling {ref}")
    started = time.monotonic()
    try:
        client = from_env(timeout=PULL_TIMEOUT_SECONDS)
        for _ in client.api.pull(repository, tag=tag, stream=True, decode=True):
            pass
        client.api.inspect_image(ref)
    except (DockerException, RequestException) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        log(f"[root] cannot pull {ref} ({first_line}); building a root image locally")
        return False
    log(f"[root] pulled {ref} in {time.monotonic() - started:.1f}s")
    return True


def build_rootfs(client: DockerClient, log: Log = _stderr, *, tag: str = ROOTFS_IMAGE) -> str:
    """Make ``isofeat/rootfs:bookworm`` with debootstrap (minbase) and ``docker import``."""
    debootstrap = shutil.which("debootstrap") or (
        "/usr/sbin/debootstrap" if Path("/usr/sbin/debootstrap").exists() else None
    )
    if debootstrap is None:
        raise IsofeatError(
            f"no root image: {ROOT_PULL_IMAGE} cannot be pulled and debootstrap is not installed",
            fix="install debootstrap (`apt-get install debootstrap`, as root), or make "
            f"{ROOT_PULL_IMAGE} available locally (`docker pull` / `docker load`)",
        )
    if os.geteuid() != 0:
        raise IsofeatError(
            f"no root image: {ROOT_PULL_IMAGE} cannot be pulled and debootstrap needs root",
            fix="run `isofeat image build` as root once (sudo), or make "
            f"{ROOT_PULL_IMAGE} available locally (`docker pull` / `docker load`)",
        )
    started = time.monotonic()
    # debootstrap runs the target's binaries: /tmp may be mounted noexec, /var/tmp rarely is.
    # mkdtemp below makes a private 0700 folder in it, so the shared parent is safe.
    var_tmp = Path("/var/tmp")  # noqa: S108  # only the parent of a mkdtemp folder
    scratch = str(var_tmp) if var_tmp.is_dir() else None
    with tempfile.TemporaryDirectory(prefix="isofeat-rootfs-", dir=scratch) as tmp:
        root = Path(tmp) / "rootfs"
        log("[root] debootstrap --variant=minbase bookworm (about 25 s)")
        _run_logged([debootstrap, "--variant=minbase", "bookworm", str(root)], "[root] ", log)
        # Like debian:bookworm-slim: no package cache, no apt lists (the base refreshes them).
        _clean_rootfs(root)
        tarball = Path(tmp) / "rootfs.tar"
        # --numeric-owner: the image's own /etc/passwd decides names, not the host's.
        subprocess.run(
            ["tar", "--numeric-owner", "-C", str(root), "-cf", str(tarball), "."], check=True
        )
        repository, version = tag.rsplit(":", 1)
        # Without a CMD, `docker run IMAGE` fails with "No command specified".
        client.api.import_image_from_file(
            str(tarball),
            repository=repository,
            tag=version,
            changes=['CMD ["bash"]', f"ENV PATH={ROOTFS_PATH}"],
        )
    log(f"[root] built {tag} in {time.monotonic() - started:.1f}s")
    return tag


def _clean_rootfs(root: Path) -> None:
    for pattern in ("var/cache/apt/archives/*.deb", "var/cache/apt/*.bin", "var/lib/apt/lists/*"):
        for path in root.glob(pattern):
            if path.is_file() and not path.is_symlink():
                path.unlink()


def _run_logged(argv: Sequence[str], prefix: str, log: Log) -> None:
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
    )
    assert proc.stdout is not None  # we asked for a pipe
    tail: list[str] = []
    for line in proc.stdout:
        line = line.rstrip()
        tail = [*tail[-19:], line]
        log(prefix + line)
    if proc.wait() != 0:
        raise IsofeatError(
            f"{argv[0]} failed with exit code {proc.returncode}; last lines:", lines=tail,
            fix="check that deb.debian.org is reachable over HTTP and that the disk has room",
        )


# --- building -------------------------------------------------------------------------


def _assemble_context(target: str, dest: Path, ca_set: extra_ca.CaSet | None) -> None:
    shutil.copytree(recipe_dir(target), dest, ignore=shutil.ignore_patterns("__pycache__"))
    for script in dest.glob("*.sh"):
        # The legacy builder has no COPY --chmod: the mode in the context is what ships.
        script.chmod(0o755)
    if ca_set is not None:
        extra_ca.write_into(ca_set, dest / extra_ca.CONTEXT_FOLDER)


def _docker_build(
    client: DockerClient,
    context: Path,
    *,
    tag: str,
    name: str,
    buildargs: Mapping[str, str],
    labels: Mapping[str, str],
    nocache: bool,
    log: Log,
) -> str:
    from docker.errors import APIError

    prefix = f"[{name}] "
    image_id = ""
    pending = ""
    try:
        stream: Iterable[dict[str, Any]] = client.api.build(
            path=str(context),
            tag=tag,
            rm=True,
            forcerm=True,
            pull=False,
            nocache=nocache,
            decode=True,
            buildargs=dict(buildargs),
            labels=dict(labels),
        )
        for chunk in stream:
            if "error" in chunk:
                raise IsofeatError(
                    f"building {tag} failed: {str(chunk['error']).strip()}",
                    fix="read the build output above; apt needs HTTP access to deb.debian.org",
                    code=1,
                )
            text = chunk.get("stream") or chunk.get("status")
            if isinstance(text, str):
                pending += text if "stream" in chunk else text + "\n"
                *lines, pending = pending.split("\n")
                for line in lines:
                    line = _ANSI.sub("", line).rstrip()
                    if line.strip():
                        log(prefix + line)
            aux = chunk.get("aux")
            if isinstance(aux, dict) and isinstance(aux.get("ID"), str):
                image_id = aux["ID"]
    except APIError as err:
        raise IsofeatError(
            f"building {tag} failed: {err.explanation or err}",
            fix="check that the Docker engine is healthy (`docker info`)",
            code=1,
        ) from err
    if pending.strip():
        log(prefix + _ANSI.sub("", pending).rstrip())
    attrs = _inspect(client, tag)
    if attrs is None:
        raise IsofeatError(f"building {tag} ended without an image", fix="see the output above")
    return image_id or str(attrs["Id"])


def build_base(
    client: DockerClient,
    ca_set: extra_ca.CaSet | None = None,
    *,
    rebuild: bool = False,
    tag: str = BASE_IMAGE,
    log: Log = _stderr,
) -> ImageResult:
    """Build (or reuse) the base image that trusts ``ca_set``.

    ``ca_set=None`` means "whatever the existing image trusts": an up-to-date image is reused
    whatever its CA set, and a rebuild (new version or recipe) carries its certificates over,
    so that forgetting ``--extra-ca`` once never silently drops a corporate CA.
    """
    started = time.monotonic()
    wanted = {LABEL_VERSION: __version__, LABEL_RECIPE: recipe_sha256("base")}
    if ca_set is not None:
        wanted[LABEL_CA] = ca_set.sha256
    attrs = _inspect(client, tag)
    if not rebuild and attrs is not None and _up_to_date(attrs, wanted):
        export_base_bundle(client, tag, str(attrs["Id"]))
        return ImageResult(
            "base", (tag,), attrs["Id"], "reused", time.monotonic() - started, _labels(attrs)
        )
    if attrs is not None and not rebuild:
        log(f"[base] {tag} is stale (another isofeat version, recipe or CA set); rebuilding")
    if ca_set is None:
        ca_set = trusted_cas(client, tag, log) if attrs is not None else extra_ca.EMPTY
    root = ensure_root_image(client, log)
    labels = {
        **wanted,
        LABEL_CA: ca_set.sha256,
        LABEL_CA_COUNT: str(len(ca_set)),
        LABEL_ROOT: root,
    }
    log(f"[base] building {tag} from {root} with {len(ca_set)} extra CA certificate(s)")
    with tempfile.TemporaryDirectory(prefix="isofeat-build-base-") as tmp:
        context = Path(tmp) / "context"
        _assemble_context("base", context, ca_set)
        image_id = _docker_build(
            client,
            context,
            tag=tag,
            name="base",
            buildargs={"ROOT_IMAGE": root},
            labels=labels,
            nocache=rebuild,
            log=log,
        )
    _prune_replaced(client, attrs, image_id)
    export_base_bundle(client, tag, image_id)
    return ImageResult("base", (tag,), image_id, "built", time.monotonic() - started, labels)


BUNDLE_IN_IMAGE = "/etc/isofeat/ca-bundle.pem"


def export_base_bundle(client: DockerClient, tag: str, image_id: str,
                       environ: Mapping[str, str] = os.environ) -> Path:
    """Copy the base image's CA bundle to the host (once per base image), where
    ``isofeat init`` adds an environment's broker CA to it for `dev` (docs/secrets.md)."""
    import io
    import tarfile

    from isofeat.atomic import write_text
    from isofeat.broker import base_bundle_path

    dest = base_bundle_path(environ)
    stamp = dest.with_name(dest.name + ".image-id")
    try:
        if stamp.read_text(encoding="ascii").strip() == image_id and dest.is_file():
            return dest
    except FileNotFoundError:
        pass
    container = client.api.create_container(tag, command=["true"])
    try:
        chunks, _ = client.api.get_archive(container["Id"], BUNDLE_IN_IMAGE)
        data = b"".join(chunks)
    finally:
        client.api.remove_container(container["Id"], force=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        member = next(m for m in tar.getmembers() if m.isfile())
        handle = tar.extractfile(member)
        assert handle is not None  # a regular file always has a handle
        text = handle.read().decode("ascii")
    write_text(dest, text, mode=0o644)
    write_text(stamp, image_id + "\n", mode=0o644)
    return dest


def _prune_replaced(client: DockerClient, old: Mapping[str, Any] | None, new_id: str) -> None:
    """Remove the image a rebuild replaced, unless something still uses it.

    The engine refuses (409) while a container or a child image uses it (a running sandbox
    keeps its proxy image); that is the answer we want, not an error.
    """
    from docker.errors import APIError

    if old is None or old.get("Id") == new_id:
        return
    with contextlib.suppress(APIError):
        client.api.remove_image(old["Id"], noprune=False)


def trusted_cas(client: DockerClient, image: str, log: Log = _stderr) -> extra_ca.CaSet:
    """The extra CAs an existing base image trusts (read from the image, never run)."""
    import io
    import tarfile

    from docker.errors import NotFound

    container = client.api.create_container(image, command=["true"])
    try:
        chunks, _ = client.api.get_archive(container["Id"], CA_FOLDER_IN_IMAGE)
        data = b"".join(chunks)
    except NotFound:
        return extra_ca.EMPTY  # an image from before the folder existed trusts nothing extra
    finally:
        client.api.remove_container(container["Id"], force=True)
    items = []
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar.getmembers():
            if member.isfile() and member.name.endswith(".crt"):
                handle = tar.extractfile(member)
                if handle is not None:
                    items.append((Path(f"{image}:{member.name}"), handle.read()))
    ca_set = extra_ca.from_pems(items)
    if ca_set:
        log(f"[base] keeping the {len(ca_set)} extra CA certificate(s) {image} trusts")
    return ca_set


def proxy_tags() -> tuple[str, ...]:
    """Every tag the proxy image gets; the first is the one to run."""
    return tuple(f"{repo}:{t}" for repo in PROXY_REPOSITORIES for t in (__version__, "latest"))


def build_proxy(
    client: DockerClient,
    *,
    base_tag: str = BASE_IMAGE,
    rebuild: bool = False,
    log: Log = _stderr,
) -> ImageResult:
    """Build (or reuse) the proxy image on top of an existing ``base_tag``."""
    return _build_on_base(client, "proxy", proxy_tags(), base_tag=base_tag, rebuild=rebuild,
                          log=log)


def build_dind(
    client: DockerClient,
    *,
    base_tag: str = BASE_IMAGE,
    rebuild: bool = False,
    log: Log = _stderr,
) -> ImageResult:
    """Build (or reuse) the Docker-in-Docker engine image on top of an existing ``base_tag``."""
    return _build_on_base(client, "dind", (DIND_IMAGE, f"{DIND_REPOSITORY}:latest"),
                          base_tag=base_tag, rebuild=rebuild, log=log)


def build_broker(
    client: DockerClient,
    *,
    base_tag: str = BASE_IMAGE,
    rebuild: bool = False,
    log: Log = _stderr,
) -> ImageResult:
    """Build (or reuse) the credential broker image on top of an existing ``base_tag``."""
    return _build_on_base(client, "broker", (BROKER_IMAGE, f"{BROKER_REPOSITORY}:latest"),
                          base_tag=base_tag, rebuild=rebuild, log=log)


def _build_on_base(
    client: DockerClient,
    target: str,
    tags: Sequence[str],
    *,
    base_tag: str,
    rebuild: bool,
    log: Log,
) -> ImageResult:
    """Build (or reuse) ``target``'s image from its recipe on top of ``base_tag``.

    Reused when its labels (isofeat version, recipe hash, base image id) match; the first tag
    is built, the others point at the same image.
    """
    started = time.monotonic()
    base = _inspect(client, base_tag)
    if base is None:
        raise IsofeatError(
            f"the {target} image builds on {base_tag}, which does not exist",
            fix="run `isofeat image build all`",
        )
    wanted = {
        LABEL_VERSION: __version__,
        LABEL_RECIPE: recipe_sha256(target),
        LABEL_BASE_ID: str(base["Id"]),
    }
    attrs = _inspect(client, tags[0])
    if not rebuild and attrs is not None and _up_to_date(attrs, wanted):
        image_id = str(attrs["Id"])
        action = "reused"
    else:
        if attrs is not None and not rebuild:
            log(f"[{target}] {tags[0]} is stale (another version, recipe or base image); "
                "rebuilding")
        log(f"[{target}] building {tags[0]} from {base_tag}")
        with tempfile.TemporaryDirectory(prefix=f"isofeat-build-{target}-") as tmp:
            context = Path(tmp) / "context"
            _assemble_context(target, context, None)
            image_id = _docker_build(
                client,
                context,
                tag=tags[0],
                name=target,
                buildargs={"BASE_IMAGE": base_tag},
                labels=wanted,
                nocache=rebuild,
                log=log,
            )
        action = "built"
    for extra in tags[1:]:
        current = _inspect(client, extra)
        if current is None or current["Id"] != image_id:
            repository, tag = extra.rsplit(":", 1)
            client.api.tag(image_id, repository, tag)
    if action == "built":
        # Only now: while the old image still had its other tags, the engine refused.
        _prune_replaced(client, attrs, image_id)
    final = _inspect(client, tags[0]) or {}
    return ImageResult(target, tuple(tags), image_id, action, time.monotonic() - started,
                       _labels(final))


def build(
    targets: Sequence[str],
    *,
    ca_set: extra_ca.CaSet | None = None,
    rebuild: bool = False,
    client: DockerClient | None = None,
    log: Log = _stderr,
) -> list[ImageResult]:
    """Build or reuse ``targets`` (``base``, ``proxy``, ``dind``, ``broker``) and what they
    depend on, in order.

    ``ca_set=None`` keeps the CAs the existing base trusts (see :func:`build_base`).
    ``rebuild`` forces a no-cache build of the named targets only; a dependency is rebuilt
    just when it is missing or stale.
    """
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        raise IsofeatError(
            f"unknown image target(s): {', '.join(unknown)}",
            fix=f"use one of: {', '.join(TARGETS)}, all",
        )
    client = client or docker_client()
    results = [build_base(client, ca_set, rebuild=rebuild and "base" in targets, log=log)]
    if "proxy" in targets:
        results.append(build_proxy(client, rebuild=rebuild, log=log))
    if "dind" in targets:
        results.append(build_dind(client, rebuild=rebuild, log=log))
    if "broker" in targets:
        results.append(build_broker(client, rebuild=rebuild, log=log))
    return results


def ensure(
    target: str,
    *,
    extra_ca_path: str | Path | None = None,
    environ: Mapping[str, str] = os.environ,
    client: DockerClient | None = None,
    log: Log = _stderr,
) -> str:
    """The tag of an up-to-date ``target`` image, building what is missing (tests, other verbs).

    The CA set is ``extra_ca_path`` or ``$ISOFEAT_EXTRA_CA_CERTS``, like the CLI; with neither,
    the existing base's CAs are kept, so this reuses what ``scripts/bootstrap`` built.
    """
    ca_set = extra_ca.from_option(extra_ca_path, environ)
    results = build([target], ca_set=ca_set, client=client, log=log)
    return results[-1].tags[0]
