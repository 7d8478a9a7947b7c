#!/usr/bin/env python3
"""Load benchmark of the control plane (`berth serve`), on SQLite and on PostgreSQL.

One run measures, for each database:

  heartbeat  wrk on loopback, POSTing heartbeats round-robin over --sessions live
             sessions (each with its own sandbox token) with --connections
             connections for --duration seconds; throughput and p50/p90/p99
             latency as wrk reports them (wrk runs on the same 2-core machine,
             so it competes with the server and the database for the CPU)
  churn      --churn-threads Python clients, each attaching and detaching its
             own workspace in a loop for --duration seconds (keep-alive
             connections); attach+detach pairs per second, p50/p99 of each call
  gc         --closed closed workspaces written straight into the metadata store
             (the API would take an hour to make them), then --sweeps GC sweeps
             through POST /v1/gc/run; the server reports each sweep's time in
             the database (`db_ms`) and in all (`duration_ms`)

The server is the release binary (`cargo build --release -p berth`, or --berth PATH
for another build, named in the results by --label); SQLite
lives in a fresh data dir, PostgreSQL is the cluster in BERTH_TEST_PG_URL
(fsync on with `./dev pg -- ...`), a fresh database per run.

Usage:
  cargo build --release -p berth
  ./dev pg -- python3 bench/control.py [--dbs sqlite,postgres] [--duration 15]
"""
import argparse
import datetime
import http.client
import json
import os
import platform
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

from benchlib import free_port

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
BERTH = os.path.join(REPO, "target", "release", "berth")
LABEL = None  # which build ran: --label, or the checkout's commit
ADMIN = "bench-admin-token-0123456789abcdef"


class Api:
    """A keep-alive JSON client for one thread."""

    def __init__(self, port, token=ADMIN):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.token = token

    def call(self, method, path, body=None):
        data = None if body is None else json.dumps(body)
        headers = {"Authorization": "Bearer " + self.token, "Content-Type": "application/json"}
        self.conn.request(method, urllib.parse.quote(path, safe="/:"), body=data, headers=headers)
        resp = self.conn.getresponse()
        raw = resp.read()
        if resp.status >= 300:
            raise RuntimeError(f"{method} {path}: {resp.status} {raw[:300]!r}")
        return json.loads(raw) if raw else None


class Server:
    def __init__(self, work, db_url=None, extra=()):
        self.port = free_port()
        self.data = os.path.join(work, "data")
        self.log = open(os.path.join(work, "serve.log"), "ab")
        args = [BERTH, "serve", "--listen", f"127.0.0.1:{self.port}", "--data-dir", self.data,
                "--lease-ttl", "3600s", "--gc-interval", "86400s", "--orphan-interval", "86400s",
                "--gc-cooldown", "0s", *extra]
        if db_url:
            args += ["--database-url", db_url]
        env = dict(os.environ, BERTH_ADMIN_TOKEN=ADMIN, BERTH_LOG="warn")
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=self.log, env=env)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
                c.request("GET", "/readyz")
                if c.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError("berth serve did not come up")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def pct(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    k = min(len(values) - 1, max(0, int(round(p / 100 * (len(values) - 1)))))
    return values[k]


LUA = r"""
local sessions = {}
local i = 0
for line in io.lines("%s") do
  local id, token, epoch, instance = line:match("(%%S+) (%%S+) (%%S+) (%%S+)")
  table.insert(sessions, {id = id, token = token, epoch = epoch, instance = instance})
end
request = function()
  i = i %% #sessions + 1
  local s = sessions[i]
  return wrk.format("POST", "/v1/sessions/" .. s.id .. "/heartbeat",
    {["Authorization"] = "Bearer " .. s.token, ["Content-Type"] = "application/json"},
    '{"epoch": ' .. s.epoch .. ', "instance_id": "' .. s.instance .. '"}')
end
done = function(summary, latency, requests)
  io.write(string.format("RESULT requests=%%d errors=%%d non2xx=%%d p50=%%d p90=%%d p99=%%d max=%%d\n",
    summary.requests, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


def heartbeats(server, work, args):
    api = Api(server.port)
    lines = []
    for i in range(args.sessions):
        owner = f"hb:{i:05d}"
        api.call("PUT", f"/v1/workspaces/{owner}", {})
        instance = f"pod-{i:05d}"
        s = api.call("POST", f"/v1/workspaces/{owner}/sessions", {"instance_id": instance})
        lines.append(f"{s['session_id']} {s['token']} {s['epoch']} {instance}")
    # Sessions heartbeat with the instance id they attached with, as a sandbox would (another
    # is refused as wrong_instance and fences the session).
    sessions = os.path.join(work, "sessions.txt")
    with open(sessions, "w") as f:
        f.write("\n".join(lines) + "\n")
    script = os.path.join(work, "heartbeat.lua")
    with open(script, "w") as f:
        f.write(LUA % sessions)
    cmd = ["wrk", "-t2", f"-c{args.connections}", f"-d{args.duration}s", "--latency", "-s", script,
           f"http://127.0.0.1:{server.port}"]
    load = os.getloadavg()[0]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    m = re.search(r"RESULT (.*)", out)
    fields = dict(kv.split("=") for kv in m.group(1).split())
    us = lambda k: int(fields[k]) / 1000.0
    return {"rate": rate, "requests": int(fields["requests"]), "errors": int(fields["errors"]),
            "non2xx": int(fields["non2xx"]), "p50_ms": us("p50"), "p90_ms": us("p90"), "p99_ms": us("p99"),
            "max_ms": us("max"), "load_before": load, "cmd": " ".join(cmd[:-1])}


def churn(server, args):
    stop_at = time.monotonic() + args.duration
    attach_ms, detach_ms, errors = [], [], []
    lock = threading.Lock()

    def worker(n):
        api = Api(server.port)
        owner = f"churn:{n}"
        api.call("PUT", f"/v1/workspaces/{owner}", {})
        a, d = [], []
        while time.monotonic() < stop_at:
            t = time.perf_counter()
            try:
                s = api.call("POST", f"/v1/workspaces/{owner}/sessions", {"instance_id": f"pod-{n}"})
                a.append((time.perf_counter() - t) * 1000)
                t = time.perf_counter()
                api.call("DELETE", f"/v1/sessions/{s['session_id']}")
                d.append((time.perf_counter() - t) * 1000)
            except Exception as e:  # noqa: BLE001 - recorded and reported
                with lock:
                    errors.append(str(e))
        with lock:
            attach_ms.extend(a)
            detach_ms.extend(d)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(args.churn_threads)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    secs = time.monotonic() - started
    return {"pairs_per_s": len(detach_ms) / secs, "attach_p50_ms": pct(attach_ms, 50), "attach_p99_ms": pct(attach_ms, 99),
            "detach_p50_ms": pct(detach_ms, 50), "detach_p99_ms": pct(detach_ms, 99), "errors": len(errors),
            "first_error": errors[0] if errors else None}


INSERT = ("INSERT INTO workspaces (owner, id, generation, state, volume, volume_state, size_bytes, access_mode, "
          "created_at, updated_at, closed_at) VALUES ({p}) ")


def populate_sqlite(path, n):
    now = time.time_ns()
    db = sqlite3.connect(path)
    rows = [(f"gc:{i:06d}", f"ws_gc{i:06d}", 1, "closed", f"ws-gc-{i:06d}-000000000", "present", 1 << 30,
             "ReadWriteOnce", now - 3600 * 10**9, now - 3600 * 10**9, now - 3600 * 10**9 + i) for i in range(n)]
    db.executemany(INSERT.format(p=",".join("?" * 11)), rows)
    db.commit()
    db.close()


def populate_postgres(url, n):
    now = time.time_ns()
    sql = (f"INSERT INTO workspaces (owner, id, generation, state, volume, volume_state, size_bytes, access_mode, "
           f"created_at, updated_at, closed_at) SELECT 'gc:' || lpad(i::text, 6, '0'), 'ws_gc' || i, 1, 'closed', "
           f"'ws-gc-' || lpad(i::text, 6, '0') || '-000000000', 'present', 1073741824, 'ReadWriteOnce', "
           f"{now - 3600 * 10**9}, {now - 3600 * 10**9}, {now - 3600 * 10**9} + i FROM generate_series(0, {n - 1}) AS i; "
           f"ANALYZE workspaces;")
    subprocess.run(["psql", "-q", "-v", "ON_ERROR_STOP=1", url, "-c", sql], check=True, stdout=subprocess.DEVNULL)


def gc(server, args):
    api = Api(server.port)
    sweeps = []
    dry = api.call("POST", "/v1/gc/run", {"dry_run": True})
    for _ in range(args.sweeps):
        r = api.call("POST", "/v1/gc/run", {})
        sweeps.append({"db_ms": r["db_ms"], "duration_ms": r["duration_ms"], "removed": r["counts"]["not_found"] + r["counts"]["removed"]})
    return {"closed": args.closed, "dry_run_db_ms": dry["db_ms"], "sweeps": sweeps}


def pg_database(base):
    name = "berth_bench_" + datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d%H%M%S")
    subprocess.run(["psql", "-q", base, "-c", f"CREATE DATABASE {name}"], check=True)
    return base.rsplit("/", 1)[0] + "/" + name


def run_db(db, args):
    work = tempfile.mkdtemp(prefix=f"berth-bench-{db}-")
    url = None
    if db == "postgres":
        base = os.environ.get("BERTH_TEST_PG_URL")
        if not base:
            sys.exit("BERTH_TEST_PG_URL is not set: run with `./dev pg -- python3 bench/control.py`")
        url = pg_database(base)
    result = {"db": db}
    server = Server(work, url)
    try:
        result["heartbeat"] = heartbeats(server, work, args)
        result["churn"] = churn(server, args)
    finally:
        server.stop()
    # The GC corpus goes into the store while no server runs, then one starts on it.
    if db == "sqlite":
        populate_sqlite(os.path.join(work, "data", "berth.db"), args.closed)
    else:
        populate_postgres(url, args.closed)
    server = Server(work, url, extra=["--gc-batch", "100", "--gc-timeout", "60s"])
    try:
        result["gc"] = gc(server, args)
    finally:
        server.stop()
    shutil.rmtree(work, ignore_errors=True)
    return result


def machine():
    cpus = os.cpu_count()
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            mem = f"{int(f.readline().split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return f"{cpus} CPUs, {mem} RAM, kernel {platform.release()}, berth {LABEL}"


def summarize(results, args):
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out = [f"#### Run, {now}", "", f"Machine: {machine()}; wrk -t2 -c{args.connections} -d{args.duration}s over "
           f"{args.sessions} sessions; {args.churn_threads} churn clients; {args.closed} closed workspaces for GC.", ""]
    out += ["| db | heartbeats/s | p50 (ms) | p90 (ms) | p99 (ms) | max (ms) | errors | attach+detach/s | attach p50/p99 (ms) | detach p50/p99 (ms) |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        h, c = r["heartbeat"], r["churn"]
        out.append(f"| {r['db']} | {h['rate']:.0f} | {h['p50_ms']:.2f} | {h['p90_ms']:.2f} | {h['p99_ms']:.2f} | {h['max_ms']:.1f} | "
                   f"{h['errors'] + h['non2xx']} | {c['pairs_per_s']:.0f} | {c['attach_p50_ms']:.1f} / {c['attach_p99_ms']:.1f} | "
                   f"{c['detach_p50_ms']:.1f} / {c['detach_p99_ms']:.1f} |")
    out += ["", "| db | closed workspaces | dry-run db ms | sweep db ms (each) | sweep total ms (each) | volumes marked per sweep |", "|---|---|---|---|---|---|"]
    for r in results:
        g = r["gc"]
        out.append(f"| {r['db']} | {g['closed']} | {g['dry_run_db_ms']} | {', '.join(str(s['db_ms']) for s in g['sweeps'])} | "
                   f"{', '.join(str(s['duration_ms']) for s in g['sweeps'])} | {', '.join(str(s['removed']) for s in g['sweeps'])} |")
    targets = []
    for r in results:
        h = r["heartbeat"]
        need = 5000 if r["db"] == "sqlite" else 3000
        targets.append((f"{r['db']}: heartbeats/s >= {need}", f"{h['rate']:.0f}", h["rate"] >= need))
        if r["db"] == "sqlite":
            targets.append(("sqlite: heartbeat p99 < 20 ms", f"{h['p99_ms']:.2f} ms", h["p99_ms"] < 20))
        worst = max(s["db_ms"] for s in r["gc"]["sweeps"])
        targets.append((f"{r['db']}: one GC sweep's database work < 1 s with {r['gc']['closed']} closed", f"{worst} ms", worst < 1000))
    out += ["", "| target | measured | result |", "|---|---|---|"]
    out += [f"| {t} | {m} | {'met' if ok else '**missed**'} |" for t, m, ok in targets]
    return "\n".join(out)


def main():
    global BERTH, LABEL
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dbs", default="sqlite,postgres")
    p.add_argument("--duration", type=int, default=15)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--sessions", type=int, default=1000)
    p.add_argument("--churn-threads", type=int, default=8)
    p.add_argument("--closed", type=int, default=100_000)
    p.add_argument("--sweeps", type=int, default=3)
    p.add_argument("--json", help="also write raw results here")
    p.add_argument("--berth", default=BERTH, help="the berth binary to serve with (default: target/release/berth)")
    p.add_argument("--label", help="what to call that build in the results (default: the checkout's commit)")
    args = p.parse_args()
    BERTH = os.path.abspath(args.berth)
    LABEL = args.label or subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                                         capture_output=True, text=True).stdout.strip()
    if not os.path.exists(BERTH):
        sys.exit(f"{BERTH} is missing: run `cargo build --release -p berth` first")
    if not shutil.which("wrk"):
        sys.exit("wrk is missing: install Debian's wrk package (apt-get install wrk)")
    results = [run_db(db, args) for db in args.dbs.split(",")]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    print(summarize(results, args))


if __name__ == "__main__":
    main()
