"""mitmproxy addon of the isofeat credential broker (runs inside the broker image only).

The sandbox holds placeholders, never real credentials. tinyproxy sends the bound hosts here;
for each request this addon either

* puts the real value in place of the placeholder, in the bound header only, on a request
  to the bound host and port, over TLS whose SNI and Host agree with the CONNECT target; or
* refuses it (403) and logs an attempt: a CONNECT to a host no binding names, plain HTTP,
  an SNI or Host that differs from the CONNECT target, a placeholder anywhere but its own
  header (URL, another header, the body), another binding's placeholder in a bound header,
  or a bound header sent twice.

Every response from a bound host is scrubbed: each real value it carries (and the exact
header value the broker sent, e.g. a Basic token) is replaced by its placeholder, in the
headers and in the body, also when the body is streamed. Requests to bound hosts ask for
uncompressed answers, so that an echo cannot hide in gzip.

Log lines are JSON on stderr; they name bindings, hosts and reasons, never values.
Only the standard library and mitmproxy: this file is not part of the host CLI.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import json
import sys
import time
from pathlib import Path
from typing import Any

from mitmproxy import ctx, http

REFUSED = 403
#: What the image's healthcheck asks for; refused like any unbound host, but not logged.
HEALTHCHECK_HOST = "isofeat-healthcheck.invalid"


def log(event: str, **fields: Any) -> None:
    record = {"ts": round(time.time(), 3), "event": event, **fields}
    print(json.dumps(record, sort_keys=True), file=sys.stderr, flush=True)


class Binding:
    def __init__(self, raw: dict[str, Any]) -> None:
        self.name = str(raw["name"])
        self.host = str(raw["host"]).lower().rstrip(".")
        self.port = int(raw["port"])
        self.header = str(raw["header"]).lower()
        self.placeholder = str(raw["placeholder"])
        self.value = str(raw["value"])
        # Optional rules: the value goes only into these methods and paths (globs).
        self.methods = tuple(raw.get("methods") or ()) or None
        self.paths = tuple(raw.get("paths") or ()) or None
        if not self.placeholder or not self.value or self.placeholder in self.value:
            raise ValueError(f"binding {self.name}: empty or overlapping placeholder and value")

    def allows(self, method: str, path: str) -> bool:
        if self.methods is not None and method.upper() not in self.methods:
            return False
        if self.paths is None:
            return True
        bare = path.split("?", 1)[0]
        # The server resolves dot segments and decodes escapes; a glob sees the raw text. A
        # path it could read differently (/o/r/../x, %2e%2e, //x, a backslash) never matches.
        segments = bare.split("/")[1:]
        if (any(seg in ("", ".", "..") for seg in segments[:-1]) or segments[-1:] == [".."]
                or "\\" in bare or any(e in bare.lower() for e in ("%2e", "%2f", "%5c"))):
            return False
        return any(fnmatch.fnmatchcase(bare, p) for p in self.paths)


class Scrubber:
    """Replaces every real value in a streamed body, also across chunk boundaries: it holds
    back the longest value's length minus one byte until the next chunk or the end."""

    def __init__(self, pairs: list[tuple[bytes, bytes]]) -> None:
        self.pairs = pairs
        self.keep = max(len(real) for real, _ in pairs) - 1
        self.tail = b""
        self.hits = 0

    def replace(self, data: bytes) -> bytes:
        for real, placeholder in self.pairs:
            if real in data:
                self.hits += data.count(real)
                data = data.replace(real, placeholder)
        return data

    def __call__(self, data: bytes) -> bytes:
        if not data:  # the end of the body: flush what was held back
            out, self.tail = self.replace(self.tail), b""
            return out
        buf = self.replace(self.tail + data)
        if len(buf) <= self.keep:
            self.tail = buf
            return b""
        cut = len(buf) - self.keep
        self.tail = buf[cut:]
        return buf[:cut]


class Broker:
    def __init__(self) -> None:
        self.bindings: list[Binding] = []
        self.by_target: dict[tuple[str, int], list[Binding]] = {}

    def load(self, loader: Any) -> None:
        loader.add_option("isofeat_bindings", str, "", "the bindings file (bindings.json)")

    def configure(self, updated: set[str]) -> None:
        if "isofeat_bindings" not in updated:
            return
        path = Path(ctx.options.isofeat_bindings)
        data = json.loads(path.read_text(encoding="utf-8"))
        self.bindings = [Binding(raw) for raw in data["bindings"]]
        self.by_target = {}
        for binding in self.bindings:
            self.by_target.setdefault((binding.host, binding.port), []).append(binding)
        log("loaded", bindings=[f"{b.name}@{b.host}:{b.port}/{b.header}" for b in self.bindings])

    # --- the tunnel ---------------------------------------------------------------------

    def http_connect(self, flow: http.HTTPFlow) -> None:
        target = (flow.request.host.lower().rstrip("."), flow.request.port)
        if target not in self.by_target:
            self.refuse(flow, "connect to a host no binding names", quiet=target[0] ==
                        HEALTHCHECK_HOST, target=target)

    # --- requests -----------------------------------------------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        # A large body is streamed (stream_large_bodies): decide on the headers now. Others
        # wait for the `request` hook, which sees the body as well.
        if flow.request.stream:
            self.decide(flow, body=None)

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is None and not flow.request.stream:
            self.decide(flow, body=flow.request.get_content(strict=False) or b"")

    def decide(self, flow: http.HTTPFlow, body: bytes | None) -> None:
        req = flow.request
        host, port = req.host.lower().rstrip("."), req.port
        where = {"host": host, "port": port, "method": req.method}
        bound = self.by_target.get((host, port))
        if bound is None:
            self.refuse(flow, "request to a host no binding names", **where)
            return
        if req.scheme != "https" or flow.client_conn.tls_version is None:
            self.refuse(flow, "plain HTTP to a bound host (only TLS gets credentials)", **where)
            return
        server = flow.server_conn.address
        if server is not None and (str(server[0]).lower().rstrip("."), int(server[1])) != (
                host, port):
            self.refuse(flow, "request host differs from the CONNECT target", **where)
            return
        sni = (flow.client_conn.sni or "").lower().rstrip(".")
        if sni != host:
            self.refuse(flow, "TLS SNI differs from the bound host", sni=sni, **where)
            return
        host_header = (req.host_header or "").lower().rstrip(".")
        if host_header not in (host, f"{host}:{port}"):
            self.refuse(flow, "Host header differs from the bound host", **where)
            return
        own = {b.header for b in bound}
        # A placeholder outside its own header is an attempt to move it somewhere it would
        # be worth something; it is never substituted there, and we refuse to carry it.
        places: list[tuple[str, str]] = [("url", req.path)]
        places += [(f"header {name}", value) for name, value in req.headers.items(multi=True)
                   if name.lower() not in own]
        places += [(f"header name {name}", name) for name in req.headers]
        for place, text in places:
            found = self.placeholders_in(text)
            if found:
                self.refuse(flow, f"placeholder in the {place}", bindings=found, **where)
                return
        if body is not None:
            found = [b.name for b in self.bindings if b.placeholder.encode() in body]
            if found:
                self.refuse(flow, "placeholder in the request body", bindings=found, **where)
                return
        substituted: list[str] = []
        pairs: list[tuple[bytes, bytes]] = []
        for header in own:
            values = req.headers.get_all(header)
            if not values:
                continue
            if len(values) > 1:
                self.refuse(flow, f"bound header {header} sent more than once", **where)
                return
            mine = [b for b in bound if b.header == header]
            new, used = self.substitute(values[0], mine)
            if new is None:
                self.refuse(flow, f"another binding's placeholder in {header}", **where)
                return
            denied = [b.name for b in mine if b.name in used
                      and not b.allows(req.method, req.path)]
            if denied:
                self.refuse(flow, "method or path not allowed for this credential",
                            bindings=denied, path=req.path.split("?", 1)[0][:200], **where)
                return
            if used:
                req.headers[header] = new
                substituted += used
                pairs.append((new.encode(), values[0].encode()))
        # Scrub the answer: every real value, and the exact header values sent.
        pairs += [(b.value.encode(), b.placeholder.encode()) for b in self.bindings]
        flow.metadata["isofeat_pairs"] = pairs
        # An echo must not hide in a compressed body.
        if "accept-encoding" in req.headers:
            req.headers["accept-encoding"] = "identity"
        log("forwarded", substituted=substituted, streamed_body=body is None,
            path=req.path.split("?", 1)[0][:200], **where)

    def placeholders_in(self, text: str) -> list[str]:
        found = [b.name for b in self.bindings if b.placeholder in text]
        if not found and text.lower().startswith("basic "):
            decoded = _basic(text)
            found = [b.name for b in self.bindings if decoded and b.placeholder in decoded]
        return found

    def substitute(self, value: str, mine: list[Binding]) -> tuple[str | None, list[str]]:
        """``value`` with this header's placeholders replaced (Basic tokens decoded first);
        ``None`` when it holds a placeholder that is not this header's."""
        # The same secret bound to several hosts has one placeholder: "other" means another
        # secret, not another record of this one.
        names = {b.name for b in mine}
        others = [b for b in self.bindings if b.name not in names]
        basic = value[:6].lower() == "basic "
        text = _basic(value) if basic else value
        if text is None:
            return value, []
        if any(b.placeholder in text for b in others):
            return None, []
        used = [b.name for b in mine if b.placeholder in text]
        for binding in mine:
            text = text.replace(binding.placeholder, binding.value)
        if basic and used:
            return value[:6] + base64.b64encode(text.encode("utf-8")).decode("ascii"), used
        return text, used

    # --- responses ----------------------------------------------------------------------

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        pairs = flow.metadata.get("isofeat_pairs")
        if not pairs or flow.response is None:
            return
        self.scrub_headers(flow, pairs)
        if flow.response.stream:
            flow.response.stream = Scrubber(pairs)

    def response(self, flow: http.HTTPFlow) -> None:
        pairs = flow.metadata.get("isofeat_pairs")
        if not pairs or flow.response is None or flow.response.stream:
            return
        scrubber = Scrubber(pairs)
        content = flow.response.get_content(strict=False) or b""
        clean = scrubber.replace(content)
        if scrubber.hits:
            flow.response.set_content(clean)
            log("scrubbed", host=flow.request.host, hits=scrubber.hits)

    def scrub_headers(self, flow: http.HTTPFlow, pairs: list[tuple[bytes, bytes]]) -> None:
        assert flow.response is not None
        fields = []
        hits = 0
        for name, value in flow.response.headers.fields:
            for real, placeholder in pairs:
                if real in value:
                    hits += 1
                    value = value.replace(real, placeholder)
            fields.append((name, value))
        if hits:
            flow.response.headers.fields = tuple(fields)
            log("scrubbed", host=flow.request.host, hits=hits, where="headers")

    # --- refusing -----------------------------------------------------------------------

    def refuse(self, flow: http.HTTPFlow, reason: str, quiet: bool = False,
               **fields: Any) -> None:
        if not quiet:
            log("refused", reason=reason, client=flow.client_conn.peername[0]
                if flow.client_conn.peername else None, **fields)
        flow.response = http.Response.make(
            REFUSED, f"isofeat-broker: refused: {reason}\n".encode(),
            {"content-type": "text/plain", "connection": "close"},
        )


def _basic(value: str) -> str | None:
    try:
        return base64.b64decode(value[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None


addons = [Broker()]
