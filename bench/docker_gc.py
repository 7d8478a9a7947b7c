#!/usr/bin/env python3
"""GC of closed workspaces' Docker volumes: `berth serve --substrate docker` next to a shell loop.

One run, on the machine's Docker Engine, for --volumes volumes (default 1,000):

  shell loop   the volumes made with the engine's API (not timed), then
               `for v in $(cat names); do docker volume rm "$v"; done` (what a platform's
               cron job does), timed as a whole
  one rm       the same number of volumes removed by ONE `docker volume rm v1 v2 ...` (the
               CLI calls the engine once per volume from one process): the engine's own floor
  berth        a fresh `berth serve --substrate docker` (release binary, SQLite in a fresh data
               dir, default GC settings: 100 candidates per sweep, 3 removals at a time, 15 s
               bound), --volumes workspaces ensured and closed through the API (not timed), then
               `POST /v1/gc/run` back to back until every volume is marked removed, timed from
               the first request to the last answer

Every volume carries the label berth-test-run=<run id> and the script removes what is left
with that label when it ends. Target: berth <= 0.5x the shell loop.

Usage:
  cargo build --release -p berth
  python3 bench/docker_gc.py [--volumes 1000] [--berth target/release/berth]
"""
import argparse
import concurrent.futures
import datetime
import http.client
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse

from benchlib import free_port

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
ADMIN = "bench-admin-token-0123456789abcdef"
LABEL = "berth-test-run"


class Engine(http.client.HTTPConnection):
    """The Docker Engine API over its unix socket (for the untimed setup)."""

    def __init__(self, path):
        super().__init__("localhost", timeout=60)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)

    def call(self, method, path, body=None):
        self.request(method, path, body=None if body is None else json.dumps(body),
                     headers={"Content-Type": "application/json"})
        resp = self.getresponse()
        raw = resp.read()
        if resp.status >= 300:
            raise RuntimeError(f"engine {method} {path}: {resp.status} {raw[:300]!r}")
        return json.loads(raw) if raw else None


def engine_socket():
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not host.startswith("unix://"):
        sys.exit("bench: set DOCKER_HOST to a unix:// socket (the setup talks to the engine directly)")
    return host[len("unix://"):]


def labelled_volumes(run):
    out = subprocess.run(["docker", "volume", "ls", "-q", "--filter", f"label={LABEL}={run}"],
                         check=True, capture_output=True, text=True).stdout
    return [l for l in out.splitlines() if l]


def make_volumes(run, names):
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        def create(chunk):
            e = Engine(engine_socket())
            for n in chunk:
                e.call("POST", "/volumes/create", {"Name": n, "Labels": {LABEL: run}})
        chunks = [names[i::8] for i in range(8)]
        list(pool.map(create, chunks))


class Api:
    def __init__(self, port):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def call(self, method, path, body=None):
        headers = {"Authorization": "Bearer " + ADMIN, "Content-Type": "application/json"}
        self.conn.request(method, urllib.parse.quote(path, safe="/:"),
                          body=None if body is None else json.dumps(body), headers=headers)
        resp = self.conn.getresponse()
        raw = resp.read()
        if resp.status >= 300:
            raise RuntimeError(f"{method} {path}: {resp.status} {raw[:300]!r}")
        return json.loads(raw) if raw else None


def timed(cmd, **kw):
    t = time.monotonic()
    subprocess.run(cmd, check=True, **kw)
    return time.monotonic() - t


def shell_loop(run, n, work):
    names = [f"bench-{run}-{i:05d}" for i in range(n)]
    make_volumes(run, names)
    listing = os.path.join(work, "names")
    with open(listing, "w") as f:
        f.write("\n".join(names) + "\n")
    secs = timed(["bash", "-c", 'for v in $(cat "$1"); do docker volume rm "$v" >/dev/null; done', "loop", listing])
    assert not labelled_volumes(run), "the shell loop left volumes"
    return secs


def one_rm(run, n):
    names = [f"bench-one-{run}-{i:05d}" for i in range(n)]
    make_volumes(run, names)
    secs = timed(["docker", "volume", "rm", *names], stdout=subprocess.DEVNULL)
    assert not labelled_volumes(run), "docker volume rm left volumes"
    return secs


def berth_gc(run, n, work, berth):
    port = free_port()
    data = os.path.join(work, "data")
    log = open(os.path.join(work, "serve.log"), "w")
    env = dict(os.environ, BERTH_ADMIN_TOKEN=ADMIN, BERTH_LOG_FORMAT="json")
    server = subprocess.Popen(
        [berth, "serve", "--substrate", "docker", "--listen", f"127.0.0.1:{port}", "--data-dir", data,
         "--gc-interval", "3600s", "--orphan-interval", "3600s", "--gc-cooldown", "0s"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("berth serve did not come up")
                time.sleep(0.05)

        def make(chunk):
            api = Api(port)
            for i in chunk:
                owner = f"thread:{i:05d}"
                api.call("PUT", f"/v1/workspaces/{owner}", {"labels": {LABEL: run}})
                api.call("POST", f"/v1/workspaces/{owner}/close", {})
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(make, [range(n)[i::8] for i in range(8)]))
        assert len(labelled_volumes(run)) == n, "berth did not create every volume"

        api = Api(port)
        sweeps, removed, server_ms = 0, 0, 0
        t = time.monotonic()
        while True:
            report = api.call("POST", "/v1/gc/run", {})
            sweeps += 1
            server_ms += report["duration_ms"]
            done = report["counts"].get("removed", 0) + report["counts"].get("not_found", 0)
            removed += done
            if report.get("skipped"):
                raise RuntimeError(f"sweep skipped: {report['skipped']}")
            if removed >= n or (done == 0 and not report["volumes"]):
                break
        secs = time.monotonic() - t
        left = labelled_volumes(run)
        assert removed == n and not left, f"berth removed {removed} of {n}; {len(left)} left"
        return secs, sweeps, server_ms / 1000
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--volumes", type=int, default=1000)
    p.add_argument("--berth", default=os.path.join(REPO, "target", "release", "berth"))
    args = p.parse_args()
    if not os.access(args.berth, os.X_OK):
        sys.exit(f"bench: {args.berth} is missing: cargo build --release -p berth")
    subprocess.run(["docker", "info"], check=True, capture_output=True)
    run = "bench" + datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
    engine = subprocess.run(["docker", "version", "--format", "{{.Server.Version}} (API {{.Server.APIVersion}})"],
                            check=True, capture_output=True, text=True).stdout.strip()
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="berth-bench-docker-") as work:
        try:
            loop = shell_loop(run, args.volumes, work)
            floor = one_rm(run, args.volumes)
            berth, sweeps, server_secs = berth_gc(run, args.volumes, work, args.berth)
        finally:
            left = labelled_volumes(run)
            if left:
                subprocess.run(["docker", "volume", "rm", *left], capture_output=True)
    n = args.volumes
    print(f"Run {run}: {n} volumes; engine {engine}; {os.cpu_count()} CPUs; kernel {platform.release()}; "
          f"load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print()
    print("| case | wall | per volume | vs the shell loop |")
    print("|---|---|---|---|")
    print(f"| shell loop of `docker volume rm` | {loop:.1f} s | {loop / n * 1000:.1f} ms | 1.00x |")
    print(f"| one `docker volume rm` with every name | {floor:.1f} s | {floor / n * 1000:.1f} ms | {floor / loop:.2f}x |")
    print(f"| berth GC ({sweeps} sweeps through `POST /v1/gc/run`; server time {server_secs:.1f} s) "
          f"| {berth:.1f} s | {berth / n * 1000:.1f} ms | **{berth / loop:.2f}x** |")
    print()
    verdict = "met" if berth / loop <= 0.5 else "NOT met"
    print(f"Target berth <= 0.5x the shell loop: {verdict} ({berth / loop:.2f}x).")


if __name__ == "__main__":
    main()
