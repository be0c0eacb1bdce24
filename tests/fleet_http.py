#!/usr/bin/env python3
"""A static file server for the fleet tests: serves one folder over HTTP/1.1 with Range
support, like an object store or nginx would.

With --cut, every full (200) response for a file under targets/ larger than 1 KiB sends only
the first half of the body and closes the connection: every download of a release file is cut
mid-way and must resume with a Range request. Each request is logged to --log as
"<status> <path> <range header or ->" (and "cut <path>" for a cut), flushed per line.

Prints the port it listens on as the first line of stdout.
"""
import argparse
import http.server
import os
import socket
import sys
import threading

LOCK = threading.Lock()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("root")
    ap.add_argument("--log", required=True)
    ap.add_argument("--cut", action="store_true")
    a = ap.parse_args()
    root = os.path.realpath(a.root)
    logf = open(a.log, "a", buffering=1)

    def log(line):
        with LOCK:
            logf.write(line + "\n")

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_GET(self):
            rel = self.path.split("?", 1)[0].lstrip("/")
            full = os.path.realpath(os.path.join(root, rel))
            rng = self.headers.get("Range")
            if not full.startswith(root + os.sep) or not os.path.isfile(full):
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                log(f"404 {rel} {rng or '-'}")
                return
            with open(full, "rb") as f:
                data = f.read()
            start, status = 0, 200
            if rng and rng.startswith("bytes="):
                start = int(rng[6:].split("-", 1)[0] or 0)
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    log(f"416 {rel} {rng}")
                    return
                status = 206
            body = data[start:]
            self.send_response(status)
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            log(f"{status} {rel} {rng or '-'}")
            if a.cut and status == 200 and rel.startswith("targets/") and len(body) > 1024:
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                log(f"cut {rel}")
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                return
            self.wfile.write(body)

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    print(srv.server_address[1], flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
