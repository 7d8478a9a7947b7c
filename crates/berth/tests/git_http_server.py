#!/usr/bin/env python3
"""Loopback git server for berth's tests.

Serves the bare repositories under ROOT over smart HTTP through `git http-backend`, and only to
clients presenting HTTP Basic auth whose password is the token in TOKEN_FILE. `POST /token` is a
workload token exchange: a Bearer IDENTITY (the content of IDENTITY_FILE) gets {"token": TOKEN}.
Binds 127.0.0.1 on a free port and writes the port to PORT_FILE.

With TOKEN_TTL_SECS, tokens expire: each exchange issues a new token (TOKEN.N) that the
repositories accept for that many seconds, and answers its `expires_in`; TOKEN itself is refused.
Every exchange is appended to EXCHANGES_FILE (PORT_FILE + ".exchanges"), one line each.

Usage: git_http_server.py ROOT TOKEN_FILE IDENTITY_FILE PORT_FILE [TOKEN_TTL_SECS]
"""
import base64
import http.server
import json
import os
import subprocess
import sys
import threading
import time

root, token_file, identity_file, port_file = sys.argv[1:5]
TTL = float(sys.argv[5]) if len(sys.argv) > 5 else None
ISSUED = {}  # token -> when it expires (monotonic), with a TTL
LOCK = threading.Lock()
TOKEN = open(token_file).read().strip()
IDENTITY = open(identity_file).read().strip()
BACKEND = os.path.join(subprocess.check_output(["git", "--exec-path"], text=True).strip(), "git-http-backend")


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def reply(self, status, body=b"", headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def token_exchange(self, body):
        if self.headers.get("Authorization", "") != "Bearer " + IDENTITY:
            return self.reply(403, b'{"error": "unknown workload"}', [("Content-Type", "application/json")])
        token, ttl = TOKEN, 3600
        if TTL is not None:
            with LOCK:
                token, ttl = "%s.%d" % (TOKEN, len(ISSUED) + 1), TTL
                ISSUED[token] = time.monotonic() + TTL
        with open(port_file + ".exchanges", "a") as f:
            f.write("%s\n" % time.time())
        self.reply(200, json.dumps({"token": token, "expires_in": ttl}).encode(), [("Content-Type", "application/json")])

    def valid(self, password):
        if TTL is None:
            return password == TOKEN
        with LOCK:
            return time.monotonic() < ISSUED.get(password, 0)

    def handle_any(self):
        body = self.body()
        path, _, query = self.path.partition("?")
        if path == "/token" and self.command == "POST":
            return self.token_exchange(body)
        user = ""
        auth = self.headers.get("Authorization", "")
        ok = False
        if auth.startswith("Basic "):
            try:
                user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
                ok = self.valid(password)
            except ValueError:
                ok = False
        if not ok:
            return self.reply(401, b"", [("WWW-Authenticate", 'Basic realm="git"')])
        env = dict(os.environ, GIT_PROJECT_ROOT=root, GIT_HTTP_EXPORT_ALL="1", REQUEST_METHOD=self.command,
                   PATH_INFO=path, QUERY_STRING=query, CONTENT_TYPE=self.headers.get("Content-Type", ""),
                   CONTENT_LENGTH=str(len(body)), REMOTE_USER=user or "git", REMOTE_ADDR="127.0.0.1",
                   GIT_PROTOCOL=self.headers.get("Git-Protocol", ""),
                   HTTP_CONTENT_ENCODING=self.headers.get("Content-Encoding", ""))
        out = subprocess.run([BACKEND], input=body, env=env, capture_output=True).stdout
        sep = b"\r\n\r\n" if b"\r\n\r\n" in out else b"\n\n"
        head, _, rest = out.partition(sep)
        status, headers = 200, []
        for line in head.replace(b"\r\n", b"\n").split(b"\n"):
            k, _, v = line.decode().partition(":")
            if not k:
                continue
            if k.lower() == "status":
                status = int(v.strip().split()[0])
            elif k.lower() != "content-length":
                headers.append((k, v.strip()))
        self.reply(status, rest, headers)

    do_GET = do_POST = handle_any

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
with open(port_file + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
os.rename(port_file + ".tmp", port_file)
server.serve_forever()
