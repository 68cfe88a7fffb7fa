"""TLS server name against the CONNECT host: domain fronting (SECURITY-CASES 24).

A measured, documented limit, asserted so that the test changes when the design does: the
proxy (tinyproxy) filters the CONNECT line and then relays bytes; it never reads the TLS
ClientHello inside the tunnel. So a client that opens ``CONNECT allowed.test:443`` can send a
ClientHello for ``attacker.test``, and the handshake reaches the allowed host's server with
that name. Behind a CDN that routes by SNI (or by ``Host:`` inside the tunnel), that is a way
to a host the whitelist does not list. docs/threat-model.md ("Domain fronting") has the cost
of closing it (a TLS-peeking proxy).

The origin is a real TLS server (Python's ssl, a throw-away self-signed certificate) that
records the server name of every ClientHello; the client is the real proxy image's client
container, on an internal network shared only with the proxy, as the sandbox is.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from .conftest import RunningProxy

# The origin: a TLS server on 443 that answers each request with the SNI it was asked for
# and the Host header it got, e.g. "sni=attacker.test host=attacker.test".
ORIGIN = r"""
import socket, ssl, subprocess, threading
subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                "ec_paramgen_curve:prime256v1", "-nodes", "-subj", "/CN=allowed.test",
                "-days", "1", "-keyout", "/tmp/key.pem", "-out", "/tmp/cert.pem"],
               check=True, capture_output=True)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain("/tmp/cert.pem", "/tmp/key.pem")
names = {}
def remember(sock, name, _ctx):
    names[id(sock)] = name
ctx.sni_callback = remember
server = socket.create_server(("0.0.0.0", 443))
print("origin ready", flush=True)
def serve(conn):
    try:
        with ctx.wrap_socket(conn, server_side=True) as tls:
            data = tls.recv(4096).decode("latin-1")
            host = next((l.split(":", 1)[1].strip() for l in data.split("\r\n")
                         if l.lower().startswith("host:")), "")
            body = f"sni={names.get(id(tls))} host={host}".encode()
            print(body.decode(), flush=True)
            tls.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    except (OSError, ssl.SSLError) as err:
        print("origin error", err, flush=True)
while True:
    conn, _ = server.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""

# The client, in the sandbox's position: CONNECT argv[1], then TLS with SNI argv[2] (no
# certificate check: the question is only where the handshake lands), then GET with Host
# argv[2]. Prints {"connect": status line, "tls": what the origin answered or the error}.
CLIENT = r"""
import json, socket, ssl, sys
target, sni = sys.argv[1], sys.argv[2]
out = {}
with socket.create_connection(("proxy", 8888), timeout=10) as s:
    s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            break
        head += chunk
    out["connect"] = head.split(b"\r\n", 1)[0].decode("latin-1")
    if " 200 " in out["connect"]:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        try:
            with ctx.wrap_socket(s, server_hostname=sni) as tls:
                tls.sendall(f"GET / HTTP/1.0\r\nHost: {sni}\r\n\r\n".encode())
                data = b""
                while chunk := tls.recv(4096):
                    data += chunk
            out["tls"] = data.split(b"\r\n\r\n", 1)[-1].decode("latin-1")
        except (OSError, ssl.SSLError) as err:
            out["tls"] = f"error: {err}"
print(json.dumps(out))
"""


def tunnel(proxy: RunningProxy, target: str, sni: str) -> dict[str, str]:
    code, out = proxy.client.exec_run(["python3", "-c", CLIENT, target, sni])
    assert code == 0, out.decode()
    result: dict[str, str] = json.loads(out.decode().strip().splitlines()[-1])
    return result


def test_a_tunnel_to_an_allowed_host_carries_any_server_name(
    start_proxy: Callable[..., RunningProxy], make_network: Callable[..., Any],
    run_container: Callable[..., Any], netkit_image: str, security_report: Any,
) -> None:
    net = make_network()
    origin = run_container(netkit_image, network=net, aliases=["allowed.test"],
                           command=["python3", "-c", ORIGIN])  # fmt: skip
    proxy = start_proxy("allowed.test\n", networks=[net])
    for _ in range(50):  # the origin makes its certificate first
        if b"origin ready" in origin.logs():
            break
        time.sleep(0.2)

    # Controls: the honest name works, and the fronted name is denied when asked for openly.
    honest = tunnel(proxy, "allowed.test:443", "allowed.test")
    assert " 200 " in honest["connect"], honest
    assert honest.get("tls") == "sni=allowed.test host=allowed.test", honest
    openly = tunnel(proxy, "attacker.test:443", "attacker.test")
    assert " 403 " in openly["connect"], openly

    fronted = tunnel(proxy, "allowed.test:443", "attacker.test")
    reached = fronted.get("tls") == "sni=attacker.test host=attacker.test"
    security_report.attack(
        "24", "CONNECT allowed.test:443, then a TLS ClientHello with SNI attacker.test and "
        "Host: attacker.test inside the tunnel",
        expected="documented limit: tinyproxy relays bytes after CONNECT (the SNI is not checked)",
        observed=f"{fronted['connect']}; the origin answered {fronted.get('tls')!r}",
        ok=reached,
    )
