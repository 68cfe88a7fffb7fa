"""The egress boundary against the real proxy image (SECURITY-CASES 1-6, 18, 19).

Every case asserts an application-level result: the proxy's 403 or 400 for a denial, and
the origin server's own answer for an allowed request.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from isofeat.cli import main
from isofeat.whitelist import Layer, merge

from .conftest import RunningProxy, status_of

pytestmark = pytest.mark.docker

DENIED = {400, 403}

LOOKALIKES = [
    "github.com.attacker.test",
    "attacker-github.com",
    "notgithub.com",
    "githubXcom",
    "github.com.",
    "xgithub.com",
    "github.co",
    "github.comm",
    "github.com-attacker.test",
    "GITHUB.COM.attacker.test",
    "github%2ecom",
    "github\\.com",
    "www.github.com",
    "github.com..",
    "github.com.:443",
]


def test_lookalikes_are_denied_over_http_and_connect(
    start_proxy: Callable[..., RunningProxy], security_report: Any,
) -> None:
    proxy = start_proxy("github.com\n")
    requests = [proxy.http_request(f"http://{host}/") for host in LOOKALIKES] + [
        proxy.connect_request(host if ":" in host else f"{host}:443") for host in LOOKALIKES
    ]
    answers = proxy.statuses(requests)
    security_report.attack(
        "1", "lookalikes of github.com over HTTP and CONNECT (proxy image, generated list)",
        expected="403 each", observed=f"{answers.count(403)} of {len(answers)} got 403",
        ok=answers == [403] * len(requests), tried=len(requests),
        failed=sum(a != 403 for a in answers))
    # The real name passes the filter (it then fails to resolve: the test proxy has no DNS).
    assert proxy.http("http://github.com/") == 500
    assert proxy.connect("github.com:443") == 500


RAW_IPS = [
    "1.2.3.4",
    "127.0.0.1",
    "169.254.169.254",
    "10.0.0.6",
    "2130706433",
    "0x7f000001",
    "0177.0.0.1",
    "127.1",
    "[::1]",
    "[::ffff:127.0.0.1]",
    "[2001:db8::2]",
    "[fe80::1%25eth0]",
]


def test_raw_ip_literals_are_denied_unless_listed(
    start_proxy: Callable[..., RunningProxy], security_report: Any,
) -> None:
    proxy = start_proxy("github.com\n10.0.0.5\n[2001:db8::1]:443\n")
    requests = [proxy.http_request(f"http://{ip}/") for ip in RAW_IPS] + [
        proxy.connect_request(f"{ip}:443") for ip in RAW_IPS
    ]
    answers = proxy.statuses(requests)
    security_report.attack(
        "2", "IPv4/IPv6 literals in every notation, over HTTP and CONNECT (proxy image)",
        expected="403 each", observed=f"{answers.count(403)} of {len(answers)} got 403",
        ok=answers == [403] * len(requests), tried=len(requests),
        failed=sum(a != 403 for a in answers))
    assert proxy.connect("10.0.0.5:443") not in DENIED
    assert proxy.connect("[2001:db8::1]:443") not in DENIED
    assert proxy.http("http://[2001:db8::1]/") == 403  # listed for 443 only


def test_ports_are_enforced_for_connect_and_plain_http(
    start_proxy: Callable[..., RunningProxy],
) -> None:
    proxy = start_proxy("github.com\nx.test:8443\n")
    for port in (22, 80, 444, 4430, 8443, 65535):
        assert proxy.connect(f"github.com:{port}") == 403, port
    for port in (22, 443, 8080, 8443, 81):
        assert proxy.http(f"http://github.com:{port}/") == 403, port
    assert proxy.http("http://github.com:80/") == 403  # see proxy_render: port-less form only
    assert proxy.connect("x.test:8443") == 500
    assert proxy.http("http://x.test:8443/") == 500
    assert proxy.connect("x.test:443") == 403
    assert proxy.http("http://x.test/") == 403


HOST_HIDING = [
    b"GET http://github.com@attacker.test/ HTTP/1.1\r\nHost: github.com\r\n\r\n",
    b"GET http://github.com:443@attacker.test/ HTTP/1.1\r\n\r\n",
    b"GET http://github.com?@attacker.test/ HTTP/1.1\r\n\r\n",
    b"GET http://github.com#@attacker.test/ HTTP/1.1\r\n\r\n",
    b"GET http://github.com\\@attacker.test/ HTTP/1.1\r\n\r\n",
    b"GET http://attacker.test/github.com HTTP/1.1\r\nHost: github.com\r\n\r\n",
    b"GET http://attacker.test/?host=github.com HTTP/1.1\r\n\r\n",
    b"GET http://attacker.test/ HTTP/1.1\r\nHost: github.com\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: attacker.test\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: github.com\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: github.com/.attacker.test\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: github.com:80\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",
    b"GET https://github.com/ HTTP/1.1\r\nHost: attacker.test\r\n\r\n",
    b"CONNECT github.com:443@attacker.test:443 HTTP/1.1\r\n\r\n",
    b"CONNECT attacker.test:443 HTTP/1.1\r\nHost: github.com:443\r\n\r\n",
    b"CONNECT github.com:443/x HTTP/1.1\r\n\r\n",
    b"CONNECT github.com HTTP/1.1\r\n\r\n",
    b"CONNECT http://github.com:443 HTTP/1.1\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: attacker.test\r\n\r\n",
    b"get http://attacker.test/ HTTP/1.1\r\n\r\n",
    b"GET HTTP://ATTACKER.TEST/ HTTP/1.1\r\n\r\n",
    b"GET ftp://attacker.test/ HTTP/1.1\r\n\r\n",
    b"GET http://attacker.test%2f@github.com/ HTTP/1.1\r\n\r\n",
]


@pytest.mark.parametrize("payload", HOST_HIDING, ids=lambda p: p.split(b"\r\n")[0].decode()[:60])
def test_tricks_that_hide_the_real_host_are_denied(
    start_proxy_once: RunningProxy, payload: bytes, security_report: Any,
) -> None:
    status = status_of(start_proxy_once.raw(payload))
    security_report.attack("4", payload.split(b"\r\n")[0].decode()[:90], expected="403 or 400",
                           observed=status, ok=status in DENIED)


MALFORMED = [
    b"GET http://github.com\x00.attacker.test/ HTTP/1.1\r\n\r\n",
    b"GET http://git\x01hub.com/ HTTP/1.1\r\n\r\n",
    b"GET http://github.com\x1b[31m/ HTTP/1.1\r\n\r\n",
    b"CONNECT github.com\x7f:443 HTTP/1.1\r\n\r\n",
    b"CONNECT github.com:443\r.attacker.test:443 HTTP/1.1\r\n\r\n",
    b"GET http://" + b"a" * 70000 + b".com/ HTTP/1.1\r\n\r\n",
    b"CONNECT " + b"a." * 40000 + b"github.com:443 HTTP/1.1\r\n\r\n",
    b"\x00\x00\x00\r\n\r\n",
    b"GET\r\n\r\n",
    b"CONNECT\r\n\r\n",
]


@pytest.mark.parametrize("payload", MALFORMED, ids=range(len(MALFORMED)))
def test_control_characters_and_oversized_names_get_4xx_and_the_proxy_keeps_serving(
    start_proxy_once: RunningProxy, payload: bytes, security_report: Any,
) -> None:
    status = status_of(start_proxy_once.raw(payload))
    after = (start_proxy_once.connect("attacker.test:443"),
             start_proxy_once.connect("github.com:443"))
    security_report.attack(
        "5", f"malformed request {payload[:40]!r} ({len(payload):,} bytes)",
        expected="a 4xx, then 403 and 500 (still serving)", observed=f"{status}, then {after}",
        ok=status is not None and 400 <= status < 500 and after == (403, 500))


@pytest.fixture(scope="module")
def start_proxy_once(
    request: pytest.FixtureRequest,
    docker_client: Any,
    proxy_image: str,
    netkit_image: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Any:
    """One proxy shared by the many small request-line cases of this module."""
    from .conftest import LABELS, RUN_ID, proxy_run_options, render_conf, wait_ready

    out = render_conf("github.com\n", tmp_path_factory.mktemp("once"))
    container = docker_client.containers.run(
        proxy_image, detach=True, name=f"isofeat-test-{RUN_ID}-once", labels=LABELS,
        **proxy_run_options(out),
    )
    container.reload()
    # The client shares only an internal network with the proxy, as the sandbox does.
    internal = docker_client.networks.create(
        f"isofeat-test-{RUN_ID}-once", internal=True, labels=LABELS
    )
    internal.connect(container, aliases=["proxy"])
    client = docker_client.containers.run(
        netkit_image,
        ["sleep", "infinity"],
        detach=True,
        labels=LABELS,
        name=f"isofeat-test-{RUN_ID}-once-client",
        network=internal.name,
    )
    proxy = RunningProxy(
        container,
        int(container.ports["8888/tcp"][0]["HostPort"]),
        out,
        container.name,
        client=client,
    )
    wait_ready(proxy)
    yield proxy
    client.remove(force=True)
    container.remove(force=True)
    internal.remove()


# ------------------------------------------------------------------ allowed traffic really flows


def test_allowed_names_reach_the_origin_over_http_and_connect(
    start_proxy: Callable[..., RunningProxy],
    make_network: Callable[..., Any],
    run_container: Callable[..., Any],
    netkit_image: str,
) -> None:
    net = make_network()
    run_container(netkit_image, network=net, aliases=["allowed.test", "other.test"])
    proxy = start_proxy("allowed.test\nallowed.test:8443\n", networks=[net])
    body = proxy.raw(b"GET http://allowed.test/hello HTTP/1.0\r\n\r\n")
    assert status_of(body) == 200 and b"port=80 request=GET /hello" in body
    assert b"port=443" in proxy.tunnel_get("allowed.test:443")
    assert b"port=8443" in proxy.tunnel_get("allowed.test:8443")
    # The same origin under a name that is not listed stays out of reach.
    assert proxy.http("http://other.test/") == 403
    assert proxy.connect("other.test:443") == 403
    assert proxy.connect("allowed.test:8080") == 403


# ------------------------------------------------------------------ decisions equal `check`

CORPUS_WHITELIST = (
    "github.com\n*.example.com\nx.test:8443\napi.github.com:8080\n10.0.0.5\n[2001:db8::1]\n"
    "under_score.test\n"
)
BASES = [
    "github.com",
    "example.com",
    "x.test",
    "api.github.com",
    "under_score.test",
    "test",
    "com",
    "attacker.test",
]
LABEL = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=12)


def host_strategy() -> st.SearchStrategy[str]:
    exact = st.sampled_from([*BASES, "10.0.0.5", "[2001:db8::1]", "10.0.0.50", "[2001:db8::10]"])
    prefixed = st.builds(lambda a, b: f"{a}.{b}", LABEL, st.sampled_from(BASES))
    suffixed = st.builds(lambda b, a: f"{b}.{a}", st.sampled_from(BASES), LABEL)
    glued = st.builds(lambda a, b: f"{a}{b}", LABEL, st.sampled_from(BASES))
    deep = st.builds(lambda a, b, c: f"{a}.{b}.{c}", LABEL, LABEL, st.sampled_from(BASES))
    mutated = st.builds(
        lambda b, i, ch: b[: i % len(b)] + ch + b[i % len(b) + 1 :],
        st.sampled_from(BASES),
        st.integers(0, 30),
        st.sampled_from(list("xX.-_0")),
    )
    cased = st.builds(
        lambda b, flips: "".join(c.upper() if (flips >> i) & 1 else c for i, c in enumerate(b)),
        st.sampled_from(BASES),
        st.integers(0, 2**16),
    )
    ipv4 = st.builds(lambda a, b, c, d: f"{a}.{b}.{c}.{d}", *[st.integers(0, 255)] * 4)
    return st.one_of(exact, prefixed, suffixed, glued, deep, mutated, cased, ipv4)


# Default ports first, so that a fair share of generated cases lands on the allow side.
PORTS = st.one_of(
    st.sampled_from([80, 443]),
    st.sampled_from([8443, 8080, 22, 81, 444]),
    st.integers(1, 65535),
)

MODES = st.sampled_from(["http", "connect"])


def random_case() -> st.SearchStrategy[tuple[str, int, str]]:
    return st.tuples(host_strategy(), PORTS, MODES)


def allowed_leaning_case() -> st.SearchStrategy[tuple[str, int, str]]:
    """Names near the allowed ones, on the ports they are allowed on, with case flips."""
    near = st.one_of(
        st.sampled_from(
            [
                "github.com",
                "GitHub.COM",
                "x.test",
                "api.github.com",
                "10.0.0.5",
                "[2001:db8::1]",
                "under_score.test",
            ]
        ),
        st.builds(lambda a: f"{a}.example.com", LABEL),
        st.builds(lambda a, b: f"{a}.{b}.EXAMPLE.com", LABEL, LABEL),
    )
    return st.tuples(near, st.sampled_from([80, 443, 8443, 8080]), MODES)


HAND_PICKED = [
    (h, p, m)
    for h in [
        *BASES,
        "a.example.com",
        "a.b.example.com",
        "10.0.0.5",
        "[2001:db8::1]",
        "github.com.",
        "GitHub.Com",
    ]
    for p in (80, 443, 8443, 8080, 22)
    for m in ("http", "connect")
]


def request_for(host: str, port: int, mode: str) -> bytes:
    """The canonical request a client sends for (host, port, mode)."""
    if mode == "http":
        return RunningProxy.http_request(
            f"http://{host}/" if port == 80 else f"http://{host}:{port}/"
        )
    return RunningProxy.connect_request(f"{host}:{port}")


def test_proxy_decisions_equal_whitelist_check_on_a_large_corpus(
    start_proxy: Callable[..., RunningProxy], security_report: Any,
) -> None:
    """Hypothesis generates the cases; the client container sends them in batches; each
    decision of the real proxy (403 or not) must equal ``whitelist check``'s."""
    proxy = start_proxy(CORPUS_WHITELIST)
    policy = merge([Layer("corpus", CORPUS_WHITELIST)])
    cases: list[tuple[str, int, str]] = list(HAND_PICKED)

    @settings(
        max_examples=1500, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(case=st.one_of(random_case(), allowed_leaning_case()))
    def generated(case: tuple[str, int, str]) -> None:
        cases.append(case)

    generated()
    answers = proxy.statuses([request_for(*case) for case in cases])
    mismatches = []
    allowed = 0
    for (host, port, mode), status in zip(cases, answers, strict=True):
        assert status is not None, (host, port, mode)
        actual = status != 403
        allowed += int(actual)
        if actual != policy.decide(host, port, mode).allowed:  # type: ignore[arg-type]
            mismatches.append(f"{mode} {host}:{port}: proxy={status}")
    print(
        f"\nproxy/check corpus: {len(cases)} cases, {allowed} allowed, "
        f"{len(mismatches)} mismatches",
        file=sys.stderr,
    )
    denied_passed = sum(1 for m in mismatches if "proxy=403" not in m)
    security_report.attack(
        "1-4", "Hypothesis corpus: the proxy's decision against `whitelist check`",
        expected="equal on every request", observed=f"{len(cases)} requests, {allowed} "
        f"allowed, {len(mismatches)} mismatches", ok=mismatches == [], tried=len(cases),
        failed=denied_passed)
    assert mismatches == []
    assert len(cases) >= 1500
    assert allowed > 50  # the corpus exercises the allow side too


# ------------------------------------------------------------------ upstream proxies


def _upstream_topology(
    make_network: Callable[..., Any],
    run_container: Callable[..., Any],
    netkit_image: str,
) -> tuple[Any, Any]:
    near, far = make_network(), make_network()
    run_container(netkit_image, network=far, aliases=["far.test"])
    return near, far


def test_socks5_upstream_carries_allowed_traffic(
    start_proxy: Callable[..., RunningProxy],
    make_network: Callable[..., Any],
    run_container: Callable[..., Any],
    netkit_image: str,
) -> None:
    near, far = _upstream_topology(make_network, run_container, netkit_image)
    socks = run_container(
        netkit_image, network=near, aliases=["socks.test"], command=["microsocks", "-p", "1080"]
    )
    far.connect(socks)
    proxy = start_proxy("far.test\n", "--upstream", "socks5://socks.test:1080", networks=[near])
    body = proxy.raw(b"GET http://far.test/via-socks HTTP/1.0\r\n\r\n")
    assert status_of(body) == 200 and b"request=GET /via-socks" in body
    assert b"port=443" in proxy.tunnel_get("far.test:443")
    assert proxy.http("http://attacker.test/") == 403  # the filter still runs first


def test_http_upstream_carries_allowed_traffic(
    start_proxy: Callable[..., RunningProxy],
    make_network: Callable[..., Any],
    run_container: Callable[..., Any],
    netkit_image: str,
    proxy_image: str,
    tmp_path: Any,
) -> None:
    near, far = _upstream_topology(make_network, run_container, netkit_image)
    # The upstream plays a corporate proxy: plain tinyproxy, no filter, on both networks.
    conf = tmp_path / "upstream"
    conf.mkdir(mode=0o755)
    (conf / "tinyproxy.conf").write_text("Port 3128\nListen 0.0.0.0\nLogLevel Info\n")
    (conf / "tinyproxy.conf").chmod(0o644)
    upstream = run_container(
        proxy_image,
        network=near,
        aliases=["corp-proxy.test"],
        entrypoint=["tinyproxy", "-d", "-c", "/etc/upstream/tinyproxy.conf"],
        volumes={str(conf): {"bind": "/etc/upstream", "mode": "ro"}},
    )
    far.connect(upstream)
    proxy = start_proxy("far.test\n", "--upstream", "http://corp-proxy.test:3128", networks=[near])
    body = proxy.raw(b"GET http://far.test/via-http HTTP/1.0\r\n\r\n")
    assert status_of(body) == 200 and b"request=GET /via-http" in body
    assert b"port=443" in proxy.tunnel_get("far.test:443")
    upstream_log = upstream.logs().decode()
    assert "far.test" in upstream_log  # it really went through the upstream
    assert proxy.connect("attacker.test:443") == 403
    assert "attacker.test" not in upstream.logs().decode()  # denied before the upstream


def test_upstreams_with_credentials_work_from_a_private_render(
    start_proxy: Callable[..., RunningProxy],
    make_network: Callable[..., Any],
    run_container: Callable[..., Any],
    netkit_image: str,
    proxy_image: str,
    tmp_path: Any,
) -> None:
    """The render is 0700/0600 owned by 2888, as `isofeat init` leaves it when run as root,
    and the proxy runs as 2888 (compose.yaml's ISOFEAT_PROXY_USER): it still reads the
    credentials and both kinds of upstream accept them; a wrong password gets nowhere."""
    near, far = _upstream_topology(make_network, run_container, netkit_image)
    socks = run_container(
        netkit_image, network=near, aliases=["socks.test"],
        command=["microsocks", "-p", "1080", "-u", "corp-user", "-P", "pw-socks"],
    )
    far.connect(socks)
    conf = tmp_path / "corp"
    conf.mkdir(mode=0o755)
    (conf / "tinyproxy.conf").write_text(
        "Port 3128\nListen 0.0.0.0\nLogLevel Info\nBasicAuth corp-user pw-http\n"
    )
    (conf / "tinyproxy.conf").chmod(0o644)
    corp = run_container(
        proxy_image, network=near, aliases=["corp-proxy.test"],
        entrypoint=["tinyproxy", "-d", "-c", "/etc/upstream/tinyproxy.conf"],
        volumes={str(conf): {"bind": "/etc/upstream", "mode": "ro"}},
    )
    far.connect(corp)
    private = ("--owner", "2888:2888")
    for upstream in ("socks5://corp-user:pw-socks@socks.test:1080",
                     "http://corp-user:pw-http@corp-proxy.test:3128"):
        proxy = start_proxy("far.test\n", "--upstream", upstream, *private,
                            networks=[near], user="2888:2888")
        st = proxy.out.stat()
        assert (st.st_mode & 0o777, st.st_uid) == (0o700, 2888)
        assert (proxy.out / "tinyproxy.conf").stat().st_mode & 0o777 == 0o600
        body = proxy.raw(b"GET http://far.test/with-creds HTTP/1.0\r\n\r\n")
        assert status_of(body) == 200 and b"request=GET /with-creds" in body, upstream
        assert b"port=443" in proxy.tunnel_get("far.test:443")
        assert proxy.http("http://attacker.test/") == 403
    assert "far.test" in corp.logs().decode()  # the HTTP upstream really carried it
    wrong = start_proxy("far.test\n", "--upstream", "socks5://corp-user:wrong@socks.test:1080",
                        *private, networks=[near], user="2888:2888")
    assert status_of(wrong.raw(b"GET http://far.test/x HTTP/1.0\r\n\r\n")) != 200


# ------------------------------------------------------------------ reload and fail-closed


def test_reload_applies_a_new_whitelist_without_restarting(
    start_proxy: Callable[..., RunningProxy],
    make_network: Callable[..., Any],
    run_container: Callable[..., Any],
    netkit_image: str,
    tmp_path: Any,
) -> None:
    net = make_network()
    run_container(netkit_image, network=net, aliases=["late.test"])
    proxy = start_proxy("github.com\n", networks=[net])
    started = proxy.container.attrs["State"]["StartedAt"]
    assert proxy.http("http://late.test/") == 403

    wl = tmp_path / "new.txt"
    wl.write_text("github.com\nlate.test\n")
    assert (
        main(
            [
                "proxy",
                "render",
                "--defaults",
                "none",
                "--no-global",
                "-w",
                str(wl),
                "--out",
                str(proxy.out),
            ]
        )
        == 0
    )
    assert main(["proxy", "reload", "--container", proxy.name]) == 0
    body = proxy.raw(b"GET http://late.test/ HTTP/1.0\r\n\r\n")
    assert status_of(body) == 200 and b"origin=" in body
    proxy.container.reload()
    assert proxy.container.attrs["State"]["StartedAt"] == started  # same process, no restart


def test_reload_refuses_a_broken_filter_and_keeps_the_old_rules(
    start_proxy: Callable[..., RunningProxy],
    capsys: pytest.CaptureFixture[str],
) -> None:
    proxy = start_proxy("github.com\n")
    (proxy.out / "filter").write_text("^(unclosed\n")
    assert main(["proxy", "reload", "--container", proxy.name]) == 1
    assert "keeps its previous rules" in capsys.readouterr().err
    assert proxy.connect("attacker.test:443") == 403
    assert proxy.connect("github.com:443") == 500


def test_a_broken_filter_that_bypasses_the_checks_fails_closed(
    start_proxy: Callable[..., RunningProxy],
) -> None:
    """SIGUSR1 sent by hand skips the entrypoint's checks: tinyproxy then exits (case 18)."""
    proxy = start_proxy("github.com\n")
    (proxy.out / "filter").write_text("^(unclosed\n")
    proxy.container.kill(signal="SIGUSR1")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        proxy.container.reload()
        if proxy.container.status != "running":
            break
        time.sleep(0.2)
    assert proxy.container.status == "exited"
    # From the sandbox's position: nothing answers at all (the connection is refused).
    assert proxy.raw(proxy.connect_request("github.com:443")) == b""


# ------------------------------------------------------------------ reading the log back


def test_egress_log_and_suggest_read_the_real_proxy_log(
    start_proxy: Callable[..., RunningProxy],
    capsys: pytest.CaptureFixture[str],
) -> None:
    proxy = start_proxy("github.com\n")
    for _ in range(3):
        assert proxy.connect("blocked.example.org:443") == 403
    assert proxy.http("http://plain.example.org:8080/x") == 403
    assert proxy.connect("github.com:22") == 403
    assert proxy.connect("github.com:443") == 500
    capsys.readouterr()
    assert main(["egress", "log", "--container", proxy.name, "--denied", "--json"]) == 0
    records = {(r["host"], r["port"], r["mode"]): r for r in json.loads(capsys.readouterr().out)}
    assert records[("blocked.example.org", 443, "connect")]["denied"] == 3
    assert records[("plain.example.org", 8080, "http")]["denied"] == 1
    assert records[("github.com", 22, "connect")]["denied"] == 1
    assert ("github.com", 443, "connect") not in records

    assert main(["whitelist", "suggest", "--container", proxy.name]) == 0
    lines = [line.split("  #")[0] for line in capsys.readouterr().out.splitlines()]
    assert "blocked.example.org" in lines
    assert "plain.example.org:8080" in lines
    assert "github.com:22" in lines


# ------------------------------------------------------------------ flood (case 19)


# Runs in the client container: holds 30 half-sent requests open, then tries 5 full ones
# and prints their status lines, then keeps holding for HOLD seconds before letting go.
FLOOD_SCRIPT = r"""
import json, socket, sys, time
held = []
for _ in range(30):
    s = socket.create_connection(("proxy", 8888), timeout=5)
    s.sendall(b"CONNECT 10.255.255.1:443 HTTP/1.1\r\n")
    held.append(s)
time.sleep(1)
extra = []
for _ in range(5):
    try:
        with socket.create_connection(("proxy", 8888), timeout=3) as s:
            s.sendall(b"CONNECT attacker.test:443 HTTP/1.1\r\n\r\n")
            extra.append(s.recv(64).split(b"\r\n")[0].decode() or "closed")
    except OSError as err:
        extra.append(type(err).__name__)
print(json.dumps(extra), flush=True)
time.sleep(float(sys.argv[1]))
"""


def test_a_flood_past_max_clients_is_refused_and_the_proxy_recovers(
    start_proxy: Callable[..., RunningProxy], security_report: Any,
) -> None:
    """Case 19, from the sandbox's position: extra connections are refused while the limit
    is reached, the other environment's proxy keeps serving, and the proxy recovers."""
    proxy = start_proxy("github.com\n", "--max-clients", "5")
    other = start_proxy("github.com\n")
    result: dict[str, Any] = {}

    def flood() -> None:
        result["exec"] = proxy.client.exec_run(["python3", "-c", FLOOD_SCRIPT, "6"])

    worker = threading.Thread(target=flood)
    worker.start()
    time.sleep(4)  # the flood holds its connections now
    assert other.connect("attacker.test:443") == 403  # the other environment is unaffected
    worker.join(60)
    code, output = result["exec"]
    assert code == 0, output.decode()[-2000:]
    extra = json.loads(output.decode().strip().splitlines()[-1])
    assert all("403" not in answer for answer in extra), extra  # none was served
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and proxy.connect("attacker.test:443") != 403:
        time.sleep(0.5)
    recovered = proxy.connect("attacker.test:443")
    security_report.attack(
        "19", "a flood past MaxClients 5: five extra connections while it holds them",
        expected="none served; the other environment's proxy unaffected; recovers",
        observed=f"extra: {extra}; recovered with {recovered}",
        ok=all("403" not in answer for answer in extra) and recovered == 403)


def test_check_cli_matches_for_the_security_case_names(tmp_path: Any) -> None:
    """The same names through the CLI exit codes, so a user sees what the proxy does."""
    whitelist = tmp_path / "whitelist.txt"  # a regular file: pipes and FIFOs are refused
    whitelist.write_text("github.com\n")
    for host in ["github.com.attacker.test", "attacker-github.com", "notgithub.com", "githubXcom"]:
        code = subprocess.run(
            [
                sys.executable,
                "-m",
                "isofeat",
                "whitelist",
                "check",
                host,
                "--defaults",
                "none",
                "--no-global",
                "-w",
                str(whitelist),
            ],
            text=True,
            capture_output=True,
            check=False,
        ).returncode
        assert code == 1, host
