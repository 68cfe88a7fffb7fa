"""3. What the egress proxy costs: throughput, latency, and whitelist size.

The layout is the template's: the client sits on an `internal` network with the proxy, the
proxy and a local origin server (nginx, isofeat-bench/origin) on a second network. The
baseline is the same client fetching from the same origin directly, over a second interface
on the origin's network, in the same run.

* Throughput: one SIZE_MB file of random data over plain HTTP (the proxy relays a GET) and
  over HTTPS (curl sends CONNECT and runs TLS through the tunnel), as MB/s (10^6 bytes/s).
* Latency: small GETs, each on a fresh TCP connection (as an agent's first request to a
  host), p50 and p95 of the time to the full answer; the proxy's added time is p50 - p50.
* Whitelist size: the same latency with 10, 100, 1,000 and 10,000 whitelist entries ahead of
  the origin's own entry (tinyproxy tries its rules in order, so the origin matching last is
  the worst case).

Proxies measured: the real `isofeat/proxy` image, and with `ISOFEAT_BENCH_PROXY_VARIANTS=1`
also the experimental images under isofeat-bench/ (tinyproxy rebuilt with other buffer
sizes, Debian's Squid), built from benchmarks/images/ when missing.
"""

from __future__ import annotations

import json
import os
import statistics
import textwrap
from dataclasses import dataclass
from pathlib import Path

from benchmarks.harness import REPO, BenchError, Context, sh

ORIGIN_IMAGE = "isofeat-bench/origin:1"
ORIGIN = "origin.bench.test"
IMAGES = REPO / "benchmarks" / "images"
PROXY_IMAGE = os.environ.get("ISOFEAT_BENCH_PROXY_IMAGE", "isofeat/proxy:latest")


@dataclass(frozen=True)
class Variant:
    label: str
    image: str
    kind: str  # "tinyproxy" (the isofeat image and its rebuilds) or "squid"
    build: tuple[str, ...] = ()  # docker build arguments, when the image is ours to build


def variants() -> list[Variant]:
    real = Variant("isofeat/proxy (Debian tinyproxy 1.11.1)", PROXY_IMAGE, "tinyproxy")
    if os.environ.get("ISOFEAT_BENCH_PROXY_VARIANTS", "") != "1":
        return [real]
    out = [real]
    # (read size, relay queue per direction) in KiB; 2/96 is Debian's build, rebuilt.
    for read_kb, relay_kb in ((2, 96), (16, 96), (64, 96), (64, 256), (128, 512), (256, 1024)):
        tag = f"isofeat-bench/tinyproxy:r{read_kb}-q{relay_kb}"
        out.append(Variant(
            f"tinyproxy, read {read_kb} KiB, queue {relay_kb} KiB", tag, "tinyproxy",
            ("--build-arg", f"READ_BUFFER_KB={read_kb}", "--build-arg", f"RELAY_KB={relay_kb}",
             "--build-arg", f"PROXY_IMAGE={PROXY_IMAGE}", str(IMAGES / "tinyproxy"))))
    out.append(Variant("Squid 5.7 (Debian; reference, no SOCKS5 upstream)",
                       "isofeat-bench/squid:1", "squid", (str(IMAGES / "squid"),)))
    return out


def ensure_image(ctx: Context, tag: str, build: tuple[str, ...]) -> None:
    if sh(["docker", "images", "-q", tag]).strip():
        return
    if not build:
        raise BenchError(f"image {tag} is missing: build it with `isofeat image build all`")
    ctx.progress(f"building {tag} (once; later runs reuse it)")
    sh(["docker", "build", "-q", "-t", tag, *build], timeout=1800)


def render(ctx: Context, extra_entries: int, name: str) -> Path:
    """The real CLI's render of the built-in list, N filler entries, then the origin."""
    wl = ctx.scratch / f"whitelist-{name}.txt"
    filler = "".join(f"filler{i}.example{i % 97}.org\n" for i in range(extra_entries))
    wl.write_text(filler + f"{ORIGIN}\n")
    out = ctx.scratch / f"proxy-{name}"
    sh([ctx.isofeat, "proxy", "render", "--defaults", "sandbox", "--no-global", "-w", str(wl),
        "--out", str(out)], env={**os.environ, "XDG_CONFIG_HOME": str(ctx.scratch / "cfg")})
    out.chmod(0o755)
    return out


class Bench:
    """The networks, origin and client for one run of this measurement."""

    def __init__(self, ctx: Context, size_mb: int) -> None:
        self.ctx = ctx
        tag = ctx.run_id
        self.sandbox = f"isofeat-bench-{tag}-sandbox"
        self.egress = f"isofeat-bench-{tag}-egress"
        sh(["docker", "network", "create", *ctx.labels(), "--internal", self.sandbox])
        sh(["docker", "network", "create", *ctx.labels(), self.egress])
        sh(["docker", "run", "-d", *ctx.labels(), "--name", f"isofeat-bench-{tag}-origin",
            "--network", self.egress, "--network-alias", ORIGIN, "-e", f"SIZE_MB={size_mb}",
            ORIGIN_IMAGE])
        self.client = f"isofeat-bench-{tag}-client"
        sh(["docker", "run", "-d", *ctx.labels(), "--name", self.client,
            "--network", self.sandbox, ORIGIN_IMAGE, "sleep", "infinity"])
        # The second interface is only for the direct baseline.
        sh(["docker", "network", "connect", self.egress, self.client])
        self.exec_py(f"""
            import time, urllib.request
            for _ in range(300):
                try:
                    if len(urllib.request.urlopen('http://{ORIGIN}/big').read()) >= {size_mb} << 20:
                        break
                except OSError:
                    pass
                time.sleep(0.2)
            else:
                raise SystemExit('origin never served /big')
        """, timeout=120)
        self.proxies: list[str] = []

    def exec_py(self, code: str, timeout: float = 300) -> str:
        return sh(["docker", "exec", "-i", self.client, "python3", "-"],
                  input=textwrap.dedent(code), timeout=timeout)

    def start_proxy(self, variant: Variant, conf: Path | None, alias: str) -> str:
        name = f"isofeat-bench-{self.ctx.run_id}-{alias}"
        hardened = ["--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
                    "--tmpfs", "/run", "--tmpfs", "/tmp"]
        if variant.kind == "tinyproxy":
            assert conf is not None
            mount = ["-v", f"{conf}:/etc/isofeat/proxy:ro"]
        else:
            mount, hardened = [], ["--tmpfs", "/run", "--tmpfs", "/tmp",
                                   "--tmpfs", "/var/spool/squid", "--tmpfs", "/var/log/squid"]
        sh(["docker", "run", "-d", *self.ctx.labels(), "--name", name, *hardened, *mount,
            "--network", self.sandbox, "--network-alias", alias, variant.image])
        sh(["docker", "network", "connect", self.egress, name])
        self.proxies.append(name)
        # Ready when it relays a small GET.
        self.exec_py(f"""
            import time, urllib.request
            opener = urllib.request.build_opener(urllib.request.ProxyHandler(
                {{'http': 'http://{alias}:8888'}}))
            for _ in range(600):
                try:
                    opener.open('http://{ORIGIN}/small', timeout=5).read()
                    break
                except OSError:
                    time.sleep(0.2)
            else:
                raise SystemExit('proxy {alias} never relayed a request')
        """, timeout=60)
        return alias

    def stop_proxy(self, alias: str) -> None:
        name = f"isofeat-bench-{self.ctx.run_id}-{alias}"
        sh(["docker", "rm", "-f", name], check=False)

    def download(self, url: str, proxy: str | None) -> float:
        """MB/s of one download of `url` with curl in the client."""
        argv = ["docker", "exec", self.client, "curl", "-sS", "-k", "-o", "/dev/null",
                "-w", "%{size_download} %{time_total}"]
        argv += ["-x", f"http://{proxy}:8888"] if proxy else ["--noproxy", "*"]
        size, seconds = sh([*argv, url], timeout=600).split()
        if int(size) == 0:
            raise BenchError(f"empty download of {url} via {proxy or 'direct'}")
        return int(size) / float(seconds) / 1e6

    def latencies(self, proxy: str | None, count: int, resolve: bool = True) -> list[float]:
        """Seconds per small GET, each on a fresh connection, measured inside the client.

        Direct requests resolve the origin's name for each request (`resolve`), as a client
        without a proxy does (glibc caches nothing); through a proxy the client resolves only
        the proxy's name, and the proxy resolves the origin.
        """
        target = (f"GET http://{ORIGIN}/small HTTP/1.1" if proxy else "GET /small HTTP/1.1")
        host, port = (proxy, 8888) if proxy else (ORIGIN, 80)
        out = self.exec_py(f"""
            import json, socket, time
            req = ({target!r} + '\\r\\nHost: {ORIGIN}\\r\\nConnection: close\\r\\n\\r\\n').encode()
            addr = socket.getaddrinfo({host!r}, {port}, socket.AF_INET)[0][4]
            out = []
            for i in range({count} + 5):
                t0 = time.perf_counter()
                if {resolve!r}:
                    addr = socket.getaddrinfo({host!r}, {port}, socket.AF_INET)[0][4]
                s = socket.create_connection(addr)
                s.sendall(req)
                data = b''
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                s.close()
                if not data.startswith(b'HTTP/1.1 200'):
                    raise SystemExit('bad answer: %r' % data[:100])
                if i >= 5:  # the first few warm caches (ARP, DNS, the proxy's pool)
                    out.append(time.perf_counter() - t0)
            print(json.dumps(out))
        """)
        return [float(x) for x in json.loads(out)]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run(ctx: Context) -> None:
    size_mb = 20 if ctx.smoke else 200
    requests = 50 if ctx.smoke else 400
    sizes = (10,) if ctx.smoke else (10, 100, 1_000, 10_000)
    m = "proxy"
    chosen = variants()
    ensure_image(ctx, ORIGIN_IMAGE, (str(IMAGES / "origin"),))
    for v in chosen:
        ensure_image(ctx, v.image, v.build)
    ctx.progress(f"proxy: origin with {size_mb} MB, client, networks")
    bench = Bench(ctx, size_mb)
    default_conf = render(ctx, 0, "default")
    aliases: dict[str, str] = {}
    for i, v in enumerate(chosen):
        aliases[v.label] = bench.start_proxy(v, default_conf, f"proxy{i}")

    # Throughput: direct and every proxy interleaved within each run, so that load on the
    # machine falls on all of them alike.
    for scheme in ("http", "https"):
        url = f"{scheme}://{ORIGIN}/big"
        rates: dict[str, list[float]] = {"direct": []}
        for run_no in range(ctx.runs):
            ctx.progress(f"proxy: {scheme.upper()} {size_mb} MB, run {run_no + 1}/{ctx.runs}")
            rates["direct"].append(bench.download(url, None))
            for v in chosen:
                rates.setdefault(v.label, []).append(bench.download(url, aliases[v.label]))
        how = "GET relayed" if scheme == "http" else "CONNECT tunnel, TLS end to end"
        base = f"{scheme.upper()} {size_mb} MB direct"
        ctx.add(m, base, "MB/s", rates["direct"], higher_is_better=True)
        for v in chosen:
            ctx.add(m, f"{scheme.upper()} {size_mb} MB via {v.label} ({how})", "MB/s",
                    rates[v.label], baseline=base, higher_is_better=True, target=">= 0.8x")

    # Latency of small requests on fresh connections; each run is `requests` requests, and
    # the figure per run is its p50 or p95.
    lat: dict[str, list[list[float]]] = {"direct": [], "direct, name resolved once": []}
    for run_no in range(ctx.runs):
        ctx.progress(f"proxy: {requests} small requests each, run {run_no + 1}/{ctx.runs}")
        lat["direct"].append(bench.latencies(None, requests))
        lat["direct, name resolved once"].append(bench.latencies(None, requests, resolve=False))
        for v in chosen:
            lat.setdefault(v.label, []).append(bench.latencies(aliases[v.label], requests))
    for q, qname in ((0.5, "p50"), (0.95, "p95")):
        base = f"small GET {qname}, direct (name resolved per request)"
        ctx.add(m, base, "s", [pct(x, q) for x in lat["direct"]])
        ctx.add(m, f"small GET {qname}, direct (name resolved once)", "s",
                [pct(x, q) for x in lat["direct, name resolved once"]], baseline=base)
        for v in chosen:
            ctx.add(m, f"small GET {qname} via {v.label}", "s",
                    [pct(x, q) for x in lat[v.label]], baseline=base)
    direct_p50 = statistics.median(pct(x, 0.5) for x in lat["direct"])
    for v in chosen:
        added = [pct(x, 0.5) - direct_p50 for x in lat[v.label]]
        ctx.add(m, f"added p50 latency, {v.label}, default list", "s", added,
                note="target < 1 ms")

    # Whitelist size, with the real image only (the filter code is tinyproxy's, whatever the
    # buffers): a fresh proxy per size, the origin's entry last.
    real = chosen[0]
    base_name = "small GET p50 via isofeat/proxy, default list"
    ctx.add(m, base_name, "s", [pct(x, 0.5) for x in lat[real.label]])
    for n in sizes:
        conf = render(ctx, n, f"wl{n}")
        alias = bench.start_proxy(real, conf, f"wl{n}")
        values = []
        for run_no in range(ctx.runs):
            ctx.progress(f"proxy: whitelist +{n} entries, run {run_no + 1}/{ctx.runs}")
            values.append(pct(bench.latencies(alias, max(20, requests // 4)), 0.5))
        bench.stop_proxy(alias)
        rules = sum(1 for line in (conf / "filter").read_text().splitlines()
                    if line and not line.startswith("#"))
        ctx.add(m, f"small GET p50 via isofeat/proxy, +{n} entries ({rules} rules)", "s",
                values, baseline=base_name)
