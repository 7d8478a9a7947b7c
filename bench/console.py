#!/usr/bin/env python3
"""Render time of the operator console (`/ui`) over many workspaces, on SQLite.

The server migrates a fresh data dir and stops; the script then writes --workspaces
workspaces straight into the metadata store (the API would take many minutes), shaped
like a busy installation: labels (team=t0..t9), a fifth with a live lease and its
session, four fifths with a latest snapshot and its statistics, 3% at risk, a mix of
states, and --events audit events. The server starts again, the script logs in through
the form (the session cookie), and requests each page --reps times over one keep-alive
loopback connection, one request at a time:

  list        /ui/workspaces                     the first page (50 rows, counts by state)
  list-mid    /ui/workspaces?after=<middle>      a page from the middle
  label       /ui/workspaces?label=team=t3       label filter (filtered in the server)
  search      /ui/workspaces?q=00042             owner search (LIKE)
  at-risk     /ui/workspaces?risk=1              at-risk only
  detail      /ui/workspaces/<owner>             one workspace with sessions and events

Latency is measured by the client from request to the last byte, so it includes the
loopback round trip: an upper bound of the server's render time. The target: the list
page at most 200 ms at p95.

Usage:
  cargo build --release -p berth
  python3 bench/console.py [--workspaces 10000] [--reps 200] [--berth target/release/berth]
"""
import argparse
import datetime
import http.client
import json
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse

from benchlib import free_port

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
ADMIN = "bench-admin-token-0123456789abcdef"
TARGET_P95_MS = 200.0


def start(berth, data, log):
    port = free_port()
    args = [berth, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", data, "--lease-ttl", "3600s",
            "--gc-interval", "86400s", "--orphan-interval", "86400s", "--expiry-interval", "3600s"]
    env = dict(os.environ, BERTH_ADMIN_TOKEN=ADMIN, BERTH_LOG="warn")
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            c.request("GET", "/readyz")
            if c.getresponse().status == 200:
                return proc, port
        except OSError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("berth serve did not come up")


def stop(proc):
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def populate(path, n, n_events):
    """Writes n workspaces with sessions, snapshots and events into the SQLite store."""
    now = time.time_ns()
    hour = 3600 * 10**9
    states = ["active"] * 7 + ["closed"] * 2 + ["deleted"]
    ws, sessions, snaps, events = [], [], [], []
    for i in range(n):
        owner = f"agent:{i:06d}"
        state = states[i % len(states)]
        leased = i % 5 == 0 and state == "active"
        at_risk = i % 33 == 1
        snapped = i % 5 != 4
        session = f"ses_{i:032x}"
        snap_id = f"{i:064x}"
        labels = json.dumps({"team": f"t{i % 10}", "tier": "gpu" if i % 7 == 0 else "cpu"})
        ws.append((
            owner, f"ws_{i:08d}", 1, state, f"ws-agent-{i:06d}-00000000", "present", 10 << 30, "ReadWriteOnce",
            labels, 1 if leased or snapped else 0, session if leased else None, f"pod-{i}" if leased else None,
            now + hour if leased else 0, snap_id if snapped else None, now - 48 * hour, now - i, 
            now - hour if state != "active" else None,
            now - 2 * hour if at_risk else None, "expired" if at_risk else None, session if at_risk else None,
        ))
        if leased or snapped or at_risk:
            sessions.append((session, owner, 1, 1, f"pod-{i}", "node-a", None, f"{i:064x}", now - 3 * hour,
                             None if leased else now - 2 * hour, "expired" if at_risk else ("clean" if not leased else None)))
        if snapped:
            stats = json.dumps({"files": 1200 + i % 100, "bytes": (200 + i % 50) << 20, "bytes_uploaded": 40960 + i,
                                "duration_ms": 300 + i % 200})
            snaps.append((owner, 1, snap_id, 1, session, now - (i % 600) * 10**9, stats))
    for j in range(n_events):
        i = j % n
        events.append((now - (n_events - j) * 10**6, "snapshot_published", f"agent:{i:06d}", 1, f"ses_{i:032x}", None,
                       json.dumps({"snapshot_id": f"{i:064x}", "epoch": 1, "final": False})))
    db = sqlite3.connect(path)
    db.executemany(
        "INSERT INTO workspaces (owner, id, generation, state, volume, volume_state, size_bytes, access_mode, labels, "
        "lease_epoch, lease_session, lease_instance, lease_expires, latest_snapshot, created_at, updated_at, closed_at, "
        "at_risk_since, at_risk_outcome, at_risk_session) VALUES (" + ",".join("?" * 20) + ")", ws)
    db.executemany(
        "INSERT INTO sessions (id, owner, generation, epoch, instance, node, pool, token_hash, created_at, ended_at, outcome) "
        "VALUES (" + ",".join("?" * 11) + ")", sessions)
    db.executemany(
        "INSERT INTO snapshots (owner, generation, snapshot_id, epoch, session_id, recorded_at, stats) VALUES (?,?,?,?,?,?,?)",
        snaps)
    db.executemany("INSERT INTO events (at, kind, owner, generation, session_id, scope, detail) VALUES (?,?,?,?,?,?,?)",
                   events)
    db.commit()
    db.execute("ANALYZE")
    db.close()
    return {"workspaces": len(ws), "sessions": len(sessions), "snapshots": len(snaps), "events": len(events)}


def login(port):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    body = urllib.parse.urlencode({"token": ADMIN})
    c.request("POST", "/ui/login", body=body, headers={"Content-Type": "application/x-www-form-urlencoded"})
    resp = c.getresponse()
    resp.read()
    if resp.status != 303:
        raise RuntimeError(f"login: {resp.status}")
    return resp.getheader("Set-Cookie").split(";")[0]


def measure(port, cookie, path, reps):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    times, size = [], 0
    for k in range(reps + 5):
        t0 = time.perf_counter()
        c.request("GET", path, headers={"Cookie": cookie})
        resp = c.getresponse()
        body = resp.read()
        dt = (time.perf_counter() - t0) * 1000
        if resp.status != 200:
            raise RuntimeError(f"GET {path}: {resp.status} {body[:300]!r}")
        if k >= 5:  # the first few warm the caches
            times.append(dt)
        size = len(body)
    times.sort()
    p = lambda q: times[min(len(times) - 1, int(round(q / 100 * (len(times) - 1))))]
    return {"p50_ms": p(50), "p95_ms": p(95), "max_ms": times[-1], "mean_ms": statistics.mean(times), "bytes": size}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workspaces", type=int, default=10000)
    ap.add_argument("--events", type=int, default=50000)
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--berth", default=os.path.join(REPO, "target", "release", "berth"))
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args()
    if not os.path.exists(args.berth):
        sys.exit(f"{args.berth} is missing: cargo build --release -p berth (or pass --berth)")
    work = tempfile.mkdtemp(prefix="berth-console-bench-")
    try:
        data = os.path.join(work, "data")
        log = open(os.path.join(work, "serve.log"), "ab")
        proc, _ = start(args.berth, data, log)
        stop(proc)
        counts = populate(os.path.join(data, "berth.db"), args.workspaces, args.events)
        proc, port = start(args.berth, data, log)
        try:
            cookie = login(port)
            mid = f"agent:{args.workspaces // 2:06d}"
            pages = [
                ("list", "/ui/workspaces"),
                ("list-mid", "/ui/workspaces?after=" + urllib.parse.quote(mid)),
                ("label", "/ui/workspaces?label=team%3Dt3"),
                ("search", "/ui/workspaces?q=00042"),
                ("at-risk", "/ui/workspaces?risk=1"),
                ("detail", "/ui/workspaces/" + urllib.parse.quote("agent:000010")),
            ]
            results = {name: measure(port, cookie, path, args.reps) for name, path in pages}
        finally:
            stop(proc)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load = os.getloadavg()
    header = (f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
              f"{os.cpu_count()} cores, load {load[0]:.1f}, binary {os.path.relpath(args.berth, REPO)}")
    if args.json:
        print(json.dumps({"header": header, "data": counts, "pages": results}, indent=2))
    else:
        print(f"# {header}")
        print(f"# data: {counts}")
        print("| page | p50 ms | p95 ms | max ms | HTML bytes |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for name, r in results.items():
            print(f"| {name} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['max_ms']:.1f} | {r['bytes']} |")
    ok = results["list"]["p95_ms"] <= TARGET_P95_MS
    print(f"list page p95 {results['list']['p95_ms']:.1f} ms: {'within' if ok else 'OVER'} the {TARGET_P95_MS:.0f} ms target",
          file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
