"""The base image (extra CAs) and the proxy image (non-root, fail-closed, healthcheck, reload).

Everything runs on the real engine with the real images. Names carry the prefix
``isofeat-test-img-<run>`` and are removed at the end.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from isofeat import extra_ca, image_build
from isofeat.cli import main

pytestmark = pytest.mark.docker

RUN = uuid.uuid4().hex[:8]
PREFIX = f"isofeat-test-img-{RUN}"
LABELS = {"isofeat.test": RUN}
CONF_DIR = "/etc/isofeat/proxy"
BUNDLE = "/etc/isofeat/ca-bundle.pem"
EX_CONFIG = 78

VALID_CONF = """\
# minimal conf in the shape `isofeat proxy render` writes
Port 8888
Listen 0.0.0.0
Timeout 30
Filter "/etc/isofeat/proxy/filter"
FilterType ere
FilterURLs On
FilterDefaultDeny Yes
LogLevel Info
"""
VALID_FILTER = "^example\\.com:443$\n"
# Asking the proxy from inside its own container: only bash is needed.
ASK = (
    'exec 3<>/dev/tcp/127.0.0.1/8888; printf "GET http://%s/ HTTP/1.0\\r\\n\\r\\n" "$1" >&3; '
    "IFS= read -r line <&3; printf '%s' \"${line%$'\\r'}\""
)


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca_and_leaf(folder: Path, name: str) -> tuple[Path, Path, Path]:
    """A CA, and a leaf for ``leaf.test`` signed by it: (ca.pem, leaf.pem, leaf.key)."""
    folder.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", f"{name}-ca.key", "-out", f"{name}-ca.pem",
            "-days", "2", "-subj", f"/CN=isofeat test CA {name}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=folder)  # fmt: skip
    openssl("req", *ec, "-keyout", f"{name}-leaf.key", "-out", f"{name}-leaf.csr",
            "-subj", "/CN=leaf.test", cwd=folder)  # fmt: skip
    ext = folder / f"{name}-leaf.ext"
    ext.write_text("subjectAltName=DNS:leaf.test\nextendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", f"{name}-leaf.csr", "-CA", f"{name}-ca.pem",
            "-CAkey", f"{name}-ca.key", "-CAcreateserial", "-out", f"{name}-leaf.pem",
            "-days", "1", "-extfile", ext.name, cwd=folder)  # fmt: skip
    return folder / f"{name}-ca.pem", folder / f"{name}-leaf.pem", folder / f"{name}-leaf.key"


def run_to_end(client: Any, image: str, command: list[str], **kwargs: Any) -> tuple[int, str, str]:
    container = client.containers.run(
        image, command, detach=True, name=f"{PREFIX}-{uuid.uuid4().hex[:6]}", labels=LABELS,
        **kwargs,
    )  # fmt: skip
    try:
        code = int(container.wait(timeout=60)["StatusCode"])
        out = container.logs(stdout=True, stderr=False).decode("utf-8", "replace")
        err = container.logs(stdout=False, stderr=True).decode("utf-8", "replace")
    finally:
        container.remove(force=True)
    return code, out, err


# ----------------------------------------------------------------------------- base image


@pytest.fixture(scope="module")
def ca_variant(
    docker_client: Any, base_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, image_build.ImageResult, dict[str, Path], extra_ca.CaSet]]:
    """A base image built with a throwaway CA bundle given through the real option.

    Built under a test tag; the apt layer comes from the cache of the real base image, so
    this costs a few seconds, not a Debian install.
    """
    folder = tmp_path_factory.mktemp("ca")
    trusted_ca, leaf, leaf_key = make_ca_and_leaf(folder, "trusted")
    second_ca, _, _ = make_ca_and_leaf(folder, "second")
    _, stranger_leaf, _ = make_ca_and_leaf(folder, "stranger")
    bundle = folder / "corporate-bundle.pem"
    bundle.write_text(trusted_ca.read_text() + second_ca.read_text())
    ca_set = extra_ca.load(bundle)
    tag = f"isofeat-test/base-ca:{RUN}"
    result = image_build.build_base(docker_client, ca_set, tag=tag, log=lambda _line: None)
    files = {"leaf": leaf, "leaf_key": leaf_key, "stranger_leaf": stranger_leaf}
    try:
        yield tag, result, files, ca_set
    finally:
        with contextlib.suppress(Exception):
            docker_client.images.remove(tag, force=True)


def test_base_image_labels_record_the_ca_set(
    ca_variant: tuple[str, image_build.ImageResult, dict[str, Path], extra_ca.CaSet],
    docker_client: Any,
) -> None:
    tag, result, _, ca_set = ca_variant
    labels = docker_client.images.get(tag).labels
    assert result.action == "built"
    assert labels[image_build.LABEL_CA] == ca_set.sha256
    assert labels[image_build.LABEL_CA_COUNT] == "2"
    assert labels[image_build.LABEL_VERSION] == image_build.__version__
    # The certificates can be read back from the image: a rebuild without --extra-ca keeps them.
    assert image_build.trusted_cas(docker_client, tag, log=lambda _l: None).sha256 == ca_set.sha256


def test_base_image_trusts_the_extra_ca_in_the_system_store_and_the_bundle_copy(
    ca_variant: tuple[str, image_build.ImageResult, dict[str, Path], extra_ca.CaSet],
    docker_client: Any,
) -> None:
    tag, _, files, _ = ca_variant
    script = r"""
set -u
printf '%s\n' "$LEAF" > /tmp/leaf.pem
printf '%s\n' "$STRANGER" > /tmp/stranger.pem
for var in SSL_CERT_FILE REQUESTS_CA_BUNDLE PIP_CERT NODE_EXTRA_CA_CERTS GIT_SSL_CAINFO \
    CURL_CA_BUNDLE; do
    echo "env $var=${!var}"
done
openssl verify -CAfile /etc/isofeat/ca-bundle.pem /tmp/leaf.pem && echo "bundle: trusted"
env -u SSL_CERT_FILE openssl verify -CApath /etc/ssl/certs /tmp/leaf.pem && echo "store: trusted"
openssl verify -CAfile /etc/isofeat/ca-bundle.pem /tmp/stranger.pem || echo "stranger: refused"
"""
    code, out, err = run_to_end(
        docker_client, tag, ["bash", "-c", script],
        environment={
            "LEAF": files["leaf"].read_text(), "STRANGER": files["stranger_leaf"].read_text()
        },
    )  # fmt: skip
    assert code == 0, err
    for var in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "PIP_CERT", "NODE_EXTRA_CA_CERTS",
                "GIT_SSL_CAINFO", "CURL_CA_BUNDLE"):  # fmt: skip
        assert f"env {var}={BUNDLE}" in out
    assert "bundle: trusted" in out
    assert "store: trusted" in out
    # The control: a CA we did not pass is not trusted, so the two checks above could fail.
    assert "stranger: refused" in out


def test_a_tls_client_in_the_base_image_completes_a_handshake_with_the_extra_ca(
    ca_variant: tuple[str, image_build.ImageResult, dict[str, Path], extra_ca.CaSet],
    docker_client: Any,
) -> None:
    tag, _, files, _ = ca_variant
    script = r"""
set -eu
printf '%s\n' "$LEAF" > /tmp/leaf.pem
printf '%s\n' "$KEY" > /tmp/leaf.key
openssl s_server -quiet -accept 127.0.0.1:4433 -cert /tmp/leaf.pem -key /tmp/leaf.key -www &
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/4433) 2>/dev/null && break; sleep 0.1; done
# Default verify paths: what curl, git and Python's ssl use through SSL_CERT_FILE.
echo | openssl s_client -connect 127.0.0.1:4433 -servername leaf.test -verify_hostname leaf.test \
    -verify_return_error 2>&1 | grep -E 'Verify return code|verify error' || true
"""
    code, out, err = run_to_end(
        docker_client, tag, ["bash", "-c", script],
        environment={"LEAF": files["leaf"].read_text(), "KEY": files["leaf_key"].read_text()},
    )  # fmt: skip
    assert code == 0, err
    assert "Verify return code: 0 (ok)" in out, out + err


def test_no_option_keeps_the_ca_set_and_an_explicit_empty_set_drops_it(
    docker_client: Any, base_image: str, tmp_path: Path
) -> None:
    ca, _, _ = make_ca_and_leaf(tmp_path, "kept")
    tag = f"isofeat-test/base-keep:{RUN}"
    quiet = lambda _line: None  # noqa: E731  # a sink for build progress
    try:
        first = image_build.build_base(docker_client, extra_ca.load(ca), tag=tag, log=quiet)
        assert first.action == "built" and first.labels[image_build.LABEL_CA_COUNT] == "1"
        kept = image_build.build_base(docker_client, None, tag=tag, log=quiet)
        assert (kept.action, kept.image_id) == ("reused", first.image_id)
        dropped = image_build.build_base(docker_client, extra_ca.EMPTY, tag=tag, log=quiet)
        assert dropped.action == "built"
        assert docker_client.images.get(tag).labels[image_build.LABEL_CA_COUNT] == "0"
        # The replaced image was pruned, not left dangling.
        from docker.errors import ImageNotFound

        with pytest.raises(ImageNotFound):
            docker_client.images.get(first.image_id)
    finally:
        with contextlib.suppress(Exception):
            docker_client.images.remove(tag, force=True)


def test_image_build_reuses_up_to_date_images(
    base_image: str, proxy_image: str, dind_image: str, broker_image: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["image", "build", "all", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert [(i["target"], i["action"]) for i in summary["images"]] == [
        ("base", "reused"),
        ("proxy", "reused"),
        ("dind", "reused"),
        ("broker", "reused"),
    ]
    assert summary["images"][1]["tags"][0] == proxy_image
    assert summary["seconds"] < 10


# ---------------------------------------------------------------------------- proxy image


@pytest.fixture
def conf_dir(tmp_path: Path) -> Callable[..., Path]:
    """Write a config folder the way the renderer must: world-readable folder and files."""

    def make(conf: str | None = VALID_CONF, filter_text: str | None = VALID_FILTER) -> Path:
        folder = tmp_path / f"conf-{uuid.uuid4().hex[:6]}"
        folder.mkdir()
        folder.chmod(0o755)
        for name, text in (("tinyproxy.conf", conf), ("filter", filter_text)):
            if text is not None:
                (folder / name).write_text(text)
                (folder / name).chmod(0o644)
        return folder

    return make


@pytest.fixture
def run_proxy(docker_client: Any, proxy_image: str) -> Iterator[Callable[..., Any]]:
    started: list[Any] = []

    def run(folder: Path, **kwargs: Any) -> Any:
        options: dict[str, Any] = {
            "volumes": {str(folder): {"bind": CONF_DIR, "mode": "ro"}},
            # The hardening the sandbox uses; the proxy needs nothing writable.
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "read_only": True,
            # Allowed names then fail fast on DNS instead of waiting on a resolver.
            "dns": ["127.0.0.1"],
            "network_mode": "none",
        }
        options.update(kwargs)
        container = docker_client.containers.run(
            proxy_image, detach=True, name=f"{PREFIX}-{uuid.uuid4().hex[:6]}", labels=LABELS,
            **options,
        )  # fmt: skip
        started.append(container)
        return container

    yield run
    for container in started:
        with contextlib.suppress(Exception):
            container.remove(force=True)


def wait_health(container: Any, want: str, timeout: float = 40.0) -> str:
    end = time.monotonic() + timeout
    status = "?"
    while time.monotonic() < end:
        container.reload()
        if container.status == "exited":
            logs = container.logs().decode("utf-8", "replace")
            raise AssertionError(f"proxy exited ({container.attrs['State']}):\n{logs}")
        status = container.attrs["State"].get("Health", {}).get("Status", "none")
        if status == want:
            return status
        time.sleep(0.5)
    raise AssertionError(f"health stayed {status!r}, wanted {want!r}: {container.attrs['State']}")


def ask(container: Any, host: str) -> str:
    code, out = container.exec_run(["bash", "-c", ASK, "ask", host])
    assert code == 0, out
    return str(out.decode())


def test_proxy_runs_as_non_root_hardened_turns_healthy_and_logs_to_docker(
    run_proxy: Callable[..., Any], conf_dir: Callable[..., Path]
) -> None:
    container = run_proxy(conf_dir())
    wait_health(container, "healthy")
    code, out = container.exec_run(["id", "-u"])
    assert code == 0 and out.decode().strip() != "0"
    top = container.top(ps_args="-o pid,uid,comm")
    assert next(row for row in top["Processes"] if row[2] == "tinyproxy")[1] != "0"
    assert ask(container, "denied.example") == "HTTP/1.0 403 Filtered"
    logs = container.logs(stdout=True, stderr=False).decode()
    # The denial lines reach `docker logs` (tinyproxy -d without LogFile writes to stdout).
    assert 'Proxying refused on filtered url "http://denied.example/"' in logs
    assert 'filtered url "http://isofeat-healthcheck.invalid/"' in logs


def test_healthcheck_fails_when_the_deny_path_is_not_live(
    run_proxy: Callable[..., Any], conf_dir: Callable[..., Path]
) -> None:
    # A filter that admits every URL: tinyproxy answers the probe with 500 (no such host),
    # not 403, and the healthcheck must say so.
    container = run_proxy(conf_dir(filter_text=".\n"))
    deadline = time.monotonic() + 20
    while ask(container, "isofeat-ready.invalid") == "" and time.monotonic() < deadline:
        time.sleep(0.2)
    code, out = container.exec_run(["/usr/local/lib/isofeat/proxy-healthcheck"])
    assert code == 1, out
    assert b"expected a 403" in out


REFUSALS = {
    "no-config": (None, VALID_FILTER, "tinyproxy.conf is missing"),
    "no-filter": (VALID_CONF, None, "filter /etc/isofeat/proxy/filter is missing"),
    "empty-filter": (VALID_CONF, "", "holds no rule"),
    "comments-only-filter": (VALID_CONF, "# nothing allowed\n\n   \n", "holds no rule"),
    "no-default-deny": (
        VALID_CONF.replace("FilterDefaultDeny Yes\n", ""), VALID_FILTER, "does not deny by default"
    ),
    "default-deny-overridden": (
        VALID_CONF + "filterdefaultdeny No\n", VALID_FILTER, "does not deny by default"
    ),
    "uppercase-ERE": (
        VALID_CONF.replace("FilterType ere", "FilterType ERE"), VALID_FILTER, "not 'ere'"
    ),
    "no-filter-urls": (
        VALID_CONF.replace("FilterURLs On", "FilterURLs Off"), VALID_FILTER, "FilterURLs is 'Off'"
    ),
    "other-filter-path": (
        VALID_CONF.replace("/etc/isofeat/proxy/filter", "/tmp/filter"), VALID_FILTER,
        "must name the filter exactly once",
    ),
    "filter-extended": (
        VALID_CONF + "FilterExtended On\n", VALID_FILTER, "deprecated FilterExtended"
    ),
    "line-over-511-bytes": (
        VALID_CONF, "^http://" + "a" * 510 + "\\.example/$\n", "tinyproxy would split it"
    ),
    "bad-regex": (VALID_CONF, "^(example\\.com:443$\n", "not a valid extended regular expression"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_entrypoint_refuses_to_start_on_an_unsafe_config(
    case: str, run_proxy: Callable[..., Any], conf_dir: Callable[..., Path]
) -> None:
    conf, filter_text, message = REFUSALS[case]
    container = run_proxy(conf_dir(conf, filter_text))
    assert container.wait(timeout=30)["StatusCode"] == EX_CONFIG
    err = container.logs(stdout=False, stderr=True).decode()
    assert "isofeat-proxy: refusing to start:" in err
    assert message in err, err
    assert "isofeat-proxy: fix:" in err


def test_entrypoint_refuses_an_unreadable_filter(
    run_proxy: Callable[..., Any], conf_dir: Callable[..., Path]
) -> None:
    folder = conf_dir()
    (folder / "filter").chmod(0o600)  # owned by us, not by the proxy's uid
    container = run_proxy(folder)
    assert container.wait(timeout=30)["StatusCode"] == EX_CONFIG
    assert "is not readable by uid" in container.logs(stderr=True).decode()


def test_tinyproxy_itself_exits_on_a_bad_regex(
    docker_client: Any, proxy_image: str, conf_dir: Callable[..., Path]
) -> None:
    # Below the entrypoint: the second line of defence the entrypoint's docs rely on.
    folder = conf_dir(filter_text="^(example\n")
    code, _, err = run_to_end(
        docker_client, proxy_image, ["-d", "-c", f"{CONF_DIR}/tinyproxy.conf"],
        entrypoint=["tinyproxy"], network_mode="none",
        volumes={str(folder): {"bind": CONF_DIR, "mode": "ro"}},
    )  # fmt: skip
    assert code == 65, err  # EX_DATAERR
    assert "Bad regex" in err


def test_sigusr1_reloads_the_filter_sighup_does_not_and_a_bad_reload_is_refused(
    run_proxy: Callable[..., Any], conf_dir: Callable[..., Path]
) -> None:
    folder = conf_dir()
    container = run_proxy(folder)
    wait_health(container, "healthy")
    assert ask(container, "allowed.invalid") == "HTTP/1.0 403 Filtered"

    # Replace the filter the way renders do (rename): the folder mount sees the new file.
    new = folder / "filter.new"
    new.write_text("^http://allowed\\.invalid/$\n")
    new.chmod(0o644)
    new.replace(folder / "filter")

    container.kill(signal="SIGHUP")  # PID 1 has no SIGHUP handler: ignored, nothing reloads
    time.sleep(1)
    container.reload()
    assert container.status == "running"
    assert ask(container, "allowed.invalid") == "HTTP/1.0 403 Filtered"

    code, out = container.exec_run(["/usr/local/lib/isofeat/proxy-entrypoint", "--reload"])
    assert code == 0, out
    deadline = time.monotonic() + 10
    while ask(container, "allowed.invalid").startswith("HTTP/1.0 403"):
        assert time.monotonic() < deadline, "the new filter never took effect"
        time.sleep(0.2)
    # Allowed now: the proxy tried to resolve it (no DNS here), so not a 403.
    assert ask(container, "allowed.invalid").startswith("HTTP/1.0 500")
    assert ask(container, "other.invalid") == "HTTP/1.0 403 Filtered"

    # A broken filter is refused by --reload; tinyproxy keeps the rules it has.
    broken = folder / "filter.new"
    broken.write_text("^(allowed\n")
    broken.chmod(0o644)
    broken.replace(folder / "filter")
    code, out = container.exec_run(["/usr/local/lib/isofeat/proxy-entrypoint", "--reload"])
    assert code == EX_CONFIG
    assert b"refusing to reload" in out
    container.reload()
    assert container.status == "running"
    assert ask(container, "other.invalid") == "HTTP/1.0 403 Filtered"
