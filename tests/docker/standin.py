"""A stand-in for the agents' APIs and for GitHub, for tests/docker/test_secrets.py.

Runs in a container on an environment's ``egress`` network under the real names
(api.anthropic.com, github.com, ...), with a certificate from a test CA that the broker is told
to trust. It records every request that arrives (method, host, path, headers, body) as a JSON
line in /tmp/requests.jsonl, so that a test can say what the far end really received.

Paths:
  /echo          answers with the request's headers, in the body and in x-echo-* headers
                 (a server that reflects the credential back)
  /big?mb=N      N MiB of 'a', streamed (the download benchmark)
  /*.git/*       401 with a Basic challenge until an Authorization header comes (git over
                 HTTPS sends its credentials only then); then, where git is installed, the
                 real `git http-backend` over bare repositories under /tmp/git (o/r.git is
                 made at start), with push allowed: a real `git push` lands there
  /v1/messages   a minimal Anthropic Messages answer saying STANDIN-REPLY (JSON, or server-sent
                 events when the request asks for a stream): enough for a real `claude -p`
  /v1/responses  a minimal OpenAI Responses answer saying STANDIN-REPLY (JSON, or server-sent
                 events when the request asks for a stream): enough for a real `codex exec`
  /v1beta/models/M:generateContent, M:streamGenerateContent
                 a minimal Gemini answer saying STANDIN-REPLY (JSON; server-sent events for
                 ?alt=sse, a JSON array for a stream without it): enough for a real `gemini -p`
  anything else  200 "ok"

Usage: python3 standin.py CERT KEY   (HTTPS on 443, plain HTTP on 80)
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

LOG = "/tmp/requests.jsonl"
GIT_ROOT = "/tmp/git"
LOCK = threading.Lock()
CHUNK = b"a" * (1 << 20)
REPLY = "STANDIN-REPLY"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _record(self, body: bytes) -> None:
        entry = {
            "tls": isinstance(self.connection, ssl.SSLSocket),
            "sni": getattr(self.connection, "isofeat_sni", None),
            "method": self.command,
            "path": self.path,
            "headers": [[k, v] for k, v in self.headers.items()],
            "body": body.decode("latin-1"),
        }
        with LOCK, open(LOG, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")

    def _handle(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        self._record(body)
        url = urlsplit(self.path)
        if url.path == "/big":
            mb = int(parse_qs(url.query).get("mb", ["1"])[0])
            self.send_response(200)
            self.send_header("content-type", "application/octet-stream")
            self.send_header("content-length", str(mb << 20))
            self.end_headers()
            for _ in range(mb):
                self.wfile.write(CHUNK)
            return
        if ".git/" in url.path and "authorization" not in self.headers:
            self.send_response(401)
            self.send_header("www-authenticate", 'Basic realm="standin"')
            self.send_header("content-length", "0")
            self.end_headers()
            return
        if ".git/" in url.path and shutil.which("git"):
            self._git(url.path, url.query, body)
            return
        if url.path == "/v1/messages" and self.command == "POST":
            self._messages(body)
            return
        if url.path == "/v1/responses" and self.command == "POST":
            self._responses(body)
            return
        if url.path.startswith("/v1beta/models/") and self.command == "POST":
            self._gemini(url.path.rpartition(":")[2], parse_qs(url.query).get("alt") == ["sse"],
                         body)
            return
        if url.path == "/echo":
            text = json.dumps({"headers": [[k, v] for k, v in self.headers.items()],
                               "body": body.decode("latin-1")}).encode()
            self.send_response(200)
            for name, value in self.headers.items():
                self.send_header(f"x-echo-{name}", value)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(text)))
            self.end_headers()
            self.wfile.write(text)
            return
        self.send_response(200)
        self.send_header("content-length", "3")
        self.end_headers()
        self.wfile.write(b"ok\n")

    def _messages(self, body: bytes) -> None:
        try:
            stream = bool(json.loads(body or b"{}").get("stream"))
        except ValueError:
            stream = False
        usage = {"input_tokens": 1, "output_tokens": 1}
        message = {"id": "msg_standin", "type": "message", "role": "assistant",
                   "model": "claude-standin", "stop_sequence": None, "usage": usage}
        if not stream:
            text = json.dumps({**message, "stop_reason": "end_turn",
                               "content": [{"type": "text", "text": REPLY}]}).encode()
            kind = "application/json"
        else:
            events = [
                ("message_start", {"message": {**message, "content": [], "stop_reason": None}}),
                ("content_block_start", {"index": 0, "content_block": {"type": "text",
                                                                       "text": ""}}),
                ("content_block_delta", {"index": 0, "delta": {"type": "text_delta",
                                                               "text": REPLY}}),
                ("content_block_stop", {"index": 0}),
                ("message_delta", {"delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                   "usage": {"output_tokens": 1}}),
                ("message_stop", {}),
            ]
            text = "".join(f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n"
                           for name, data in events).encode()
            kind = "text/event-stream"
        self._send(kind, text)

    def _responses(self, body: bytes) -> None:
        try:
            stream = bool(json.loads(body or b"{}").get("stream"))
        except ValueError:
            stream = False
        item: dict[str, Any] = {"type": "message", "id": "msg_standin", "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": REPLY, "annotations": []}]}
        usage = {"input_tokens": 1, "input_tokens_details": {"cached_tokens": 0},
                 "output_tokens": 1, "output_tokens_details": {"reasoning_tokens": 0},
                 "total_tokens": 2}
        response: dict[str, Any] = {"id": "resp_standin", "object": "response",
                                    "model": "gpt-standin", "status": "completed",
                                    "output": [item], "usage": usage}
        if not stream:
            self._send("application/json", json.dumps(response).encode())
            return
        # Codex shows the text of `response.output_item.done` and waits for
        # `response.completed`; the delta is what a streaming client prints as it comes.
        events: list[tuple[str, dict[str, Any]]] = [
            ("response.created", {"response": {**response, "status": "in_progress",
                                               "output": []}}),
            ("response.output_item.added", {"output_index": 0,
                                            "item": {**item, "status": "in_progress",
                                                     "content": []}}),
            ("response.output_text.delta", {"output_index": 0, "content_index": 0,
                                            "item_id": "msg_standin", "delta": REPLY}),
            ("response.output_item.done", {"output_index": 0, "item": item}),
            ("response.completed", {"response": response}),
        ]
        self._send("text/event-stream", "".join(
            f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n"
            for name, data in events).encode())

    def _gemini(self, method: str, sse: bool, body: bytes) -> None:
        if method == "countTokens":
            self._send("application/json", b'{"totalTokens": 1}')
            return
        try:
            config = json.loads(body or b"{}").get("generationConfig") or {}
        except ValueError:
            config = {}
        # Gemini CLI first asks a small model to route the prompt, with a JSON schema for the
        # answer, and retries while the answer does not fit it: answer such calls in JSON.
        schema = config.get("responseJsonSchema") or config.get("responseSchema")
        text = json.dumps(_fill(schema)) if schema else REPLY
        answer = json.dumps({
            "candidates": [{"content": {"role": "model", "parts": [{"text": text}]},
                            "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": 1, "candidatesTokenCount": 1,
                              "totalTokenCount": 2},
            "modelVersion": "gemini-standin",
        })
        if method == "streamGenerateContent":
            # ?alt=sse asks for server-sent events; without it the stream is a JSON array.
            if sse:
                self._send("text/event-stream", f"data: {answer}\r\n\r\n")
            else:
                self._send("application/json", f"[{answer}]")
        else:
            self._send("application/json", answer)

    def _git(self, path: str, query: str, body: bytes) -> None:
        """git's smart HTTP, answered by the real `git http-backend` (CGI). REMOTE_USER
        set: http-backend serves receive-pack (push) only to an authenticated user."""
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GIT_PROJECT_ROOT": GIT_ROOT,
               "GIT_HTTP_EXPORT_ALL": "1", "REMOTE_USER": "standin", "REMOTE_ADDR": "0.0.0.0",
               "PATH_INFO": path, "QUERY_STRING": query, "REQUEST_METHOD": self.command,
               "CONTENT_TYPE": self.headers.get("content-type", ""),
               "CONTENT_LENGTH": str(len(body)), "GIT_PROTOCOL":
               self.headers.get("git-protocol", ""), "HTTP_CONTENT_ENCODING":
               self.headers.get("content-encoding", "")}
        done = subprocess.run(["git", "http-backend"], input=body, env=env,
                              capture_output=True, check=False)
        head, _, data = done.stdout.partition(b"\r\n\r\n")
        status, headers = 200, []
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                headers.append((name, value.strip()))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _send(self, kind: str, text: bytes | str) -> None:
        data = text.encode() if isinstance(text, str) else text
        self.send_response(200)
        self.send_header("content-type", kind)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_HEAD = _handle


def _fill(schema: dict[str, Any]) -> object:
    """The smallest value that fits a (Gemini or JSON) schema: required properties only,
    the first enum value, STANDIN-REPLY for strings."""
    kind = str(schema.get("type", "object")).lower()
    if schema.get("enum"):
        return schema["enum"][0]
    if kind == "object":
        props = schema.get("properties") or {}
        return {name: _fill(props.get(name) or {}) for name in schema.get("required") or props}
    return {"string": REPLY, "integer": 1, "number": 1, "boolean": False,
            "array": []}.get(kind)


def main() -> None:
    cert, key = sys.argv[1], sys.argv[2]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)

    def remember_sni(sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        sock.isofeat_sni = name  # type: ignore[attr-defined]  # read back in _record

    context.sni_callback = remember_sni  # type: ignore[assignment]  # accepts SSLSocket too
    tls = ThreadingHTTPServer(("0.0.0.0", 443), Handler)
    tls.socket = context.wrap_socket(tls.socket, server_side=True, do_handshake_on_connect=False)
    plain = ThreadingHTTPServer(("0.0.0.0", 80), Handler)
    for server in (tls, plain):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    if shutil.which("git"):
        bare = os.path.join(GIT_ROOT, "o", "r.git")
        subprocess.run(["git", "init", "-q", "--bare", bare], check=True)
        # http-backend serves receive-pack only when the repository allows it.
        subprocess.run(["git", "--git-dir", bare, "config", "http.receivepack", "true"],
                       check=True)
    print("standin ready", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
