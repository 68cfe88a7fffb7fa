"""A tiny origin server for the proxy tests: every answer names the host and port it came from.

It speaks just enough HTTP for a request sent directly or through a CONNECT tunnel, so a test
can prove that an allowed request really reached this server and not something else.
"""

import socket
import socketserver
import sys
import threading


class Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        line = self.rfile.readline(4096).decode("latin-1").strip()
        while self.rfile.readline(4096) not in (b"\r\n", b"\n", b""):
            pass
        port = self.server.server_address[1]
        body = f"origin={socket.gethostname()} port={port} request={line}\n".encode()
        self.wfile.write(
            b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def main() -> None:
    servers = [Server(("0.0.0.0", int(p)), Handler) for p in sys.argv[1:]]
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for t in threads:
        t.start()
    print("origin ready", flush=True)
    for t in threads:
        t.join()


if __name__ == "__main__":
    main()
