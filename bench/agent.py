#!/usr/bin/env python3
"""Benchmark of the sandbox agent (`berth agent`) on the shared corpus, side by side with the
anchors a user would compare it with, in one run:

  drain     an idle agent (`berth agent run -- sleep infinity`) on a working copy that has a
            first snapshot; 0.1% of the files change (mutate.py --no-git, so the changes are
            uncommitted), then SIGTERM: wall time to exit, which includes the work-in-progress
            commit, the push to a local bare remote and the final snapshot (local store)
  restore   `berth agent init` into an empty directory (restores the latest snapshot, the git
            state and the index stat refresh), against `cp -a` of the same tree; both start
            from a cold page cache (dropped when running as root)
  status    the first `git status` after that init, against a warm `git status` (the second
            one); and, for context, the first `git status` after a plain `berth snapshot
            restore` (no index refresh)
  churn     (--churn) a writer changes one file every 100 ms for --churn-secs under
            `agent run --interval 2`: berth's CPU including its git and SQLite helpers (the
            agent's own and its waited-for children's CPU time), store growth per published
            snapshot, RPO p95; then a 10-file edit spread over 10 directories: bytes uploaded and
            snapshot time against a no-change snapshot (`berth snapshot create`)
  rpo       a writer rewrites a file every 100 ms for --rpo-secs; change-to-durable latency is
            the end of the first snapshot that started after the change, minus the change (from
            the agent's snapshot_durable log lines); then the agent's CPU over --idle-secs with
            nothing changing

The agent runs with --no-default-excludes --budget unlimited, so it snapshots and restores exactly
the tree cp -a copies. Timed steps run after `sync` and a settle pause; medians over --reps.

Usage:
  cargo build --release -p berth
  python3 bench/agent.py [--scale 1] [--reps 3] [--work bench-work]
"""
import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
# BERTH_BIN names another build (e.g. target-rel/release/berth); BERTH_BENCH_SHARED the directory
# of make_corpus.py and mutate.py when it is not ../shared/bench.
BERTH = os.path.abspath(os.environ.get("BERTH_BIN") or os.path.join(REPO, "target", "release", "berth"))
SHARED = os.environ.get("BERTH_BENCH_SHARED") or os.path.join(os.path.dirname(REPO), "shared", "bench")


def sh(cmd, **kw):
    return subprocess.run(cmd, shell=True, check=True, capture_output=True, text=True, **kw).stdout


def drop_caches():
    """Empties the page cache (root only), so a timed step reads from the disk, not memory."""
    sh("sync")
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def timed(cmd, cwd=None, cold=False):
    sh("sync")
    if cold:
        drop_caches()
    t = time.monotonic()
    subprocess.run(cmd, shell=True, check=True, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - t


def corpus(work, scale, seed=42):
    d = os.path.join(work, f"corpus-s{scale:g}-seed{seed}")
    if not os.path.isdir(d):
        sh(f"python3 {SHARED}/make_corpus.py {d} --scale {scale} --seed {seed}")
    return d


def agent_args(ws, store, ws_id, base, cache, extra=""):
    return (f"--dir {ws} --store file://{store} --workspace {ws_id} --no-default-excludes --budget unlimited "
            f"--base {base} --cache-dir {cache} {extra}")


def start_agent(args, log, command="sleep infinity"):
    env = dict(os.environ, BERTH_LOG="info", BERTH_LOG_FORMAT="json")
    return subprocess.Popen(f"exec {BERTH} agent run {args} -- {command}", shell=True, env=env,
                            stdout=subprocess.DEVNULL, stderr=open(log, "w"))


def log_events(log, event):
    out = []
    for line in open(log):
        try:
            j = json.loads(line)
        except ValueError:
            continue
        if j.get("fields", {}).get("event") == event:
            ts = datetime.datetime.fromisoformat(j["timestamp"].replace("Z", "+00:00")).timestamp()
            out.append((ts, j["fields"]))
    return out


def wait_event(log, event, n=1, timeout=600, pred=lambda f: True):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if len([e for e in log_events(log, event) if pred(e[1])]) >= n:
            return
        time.sleep(0.1)
    raise RuntimeError(f"no {event} in {log} within {timeout} s")


def cpu_secs(pid, children=False):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    n = 4 if children else 2
    return sum(int(x) for x in fields[11:11 + n]) / os.sysconf("SC_CLK_TCK")


def store_bytes(store):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(store) for f in fs)


def churn(args, src):
    """A writer changes one file every 100 ms under `agent run --interval 2`; then a 10-file edit."""
    root = os.path.join(args.work, "agent-churn")
    subprocess.run(["rm", "-rf", root], check=True)
    os.makedirs(root)
    ws, store, base, cache = (os.path.join(root, n) for n in ("ws", "store", "jobs", "cache"))
    sh(f"cp -a {src} {ws}")
    r = {}
    log = os.path.join(root, "agent-churn.log")
    p = start_agent(agent_args(ws, store, "bench:churn", base, cache, "--first-after 0 --interval 2"), log)
    wait_event(log, "snapshot_durable", timeout=900)
    time.sleep(3)
    n_before = len([e for e in log_events(log, "snapshot_durable") if not e[1].get("unchanged")])
    size0, c0 = store_bytes(store), cpu_secs(p.pid, children=True)
    r["load_avg_before"] = os.getloadavg()[0]
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(os.path.join(ws, "docs")) for f in fs)[:20]
    changes, n, stop_at = [], 0, time.time() + args.churn_secs
    t0 = time.time()
    while time.time() < stop_at:
        n += 1
        with open(files[n % len(files)], "a") as f:
            f.write(f"{n}\n")
        changes.append(time.time())
        time.sleep(0.1)
    time.sleep(4)
    wall = time.time() - t0
    r["churn_cpu_pct"] = (cpu_secs(p.pid, children=True) - c0) / wall * 100
    r["load_avg_after"] = os.getloadavg()[0]
    snaps = [(ts - f["secs"], ts) for ts, f in log_events(log, "snapshot_durable") if not f.get("unchanged")]
    n_snaps = len(snaps) - n_before
    r["churn_snapshots"] = n_snaps
    secs = [f["secs"] for ts, f in log_events(log, "snapshot_durable") if ts >= t0]
    r["churn_run_secs_median"] = sorted(secs)[len(secs) // 2] if secs else None
    r["churn_growth_per_snapshot"] = (store_bytes(store) - size0) / max(n_snaps, 1)
    lat = sorted(min([e for s, e in snaps if s >= c] or [float("inf")]) - c for c in changes)
    r["churn_rpo_p50"] = lat[len(lat) // 2]
    r["churn_rpo_p95"] = lat[int(len(lat) * 0.95)]
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=120)
    # A 10-file edit over 10 directories, against a no-change snapshot (same store and cache).
    snap = (f"{BERTH} snapshot create --store file://{store} --workspace bench:churn --cache-dir {cache} "
            f"--no-default-excludes --budget unlimited --json {ws}")
    json.loads(sh(snap))
    nochange = json.loads(sh(snap))
    dirs = sorted({os.path.dirname(f) for f in (os.path.join(d, x) for d, _, fs in os.walk(ws)
                   if "/.git" not in d and "/.berth" not in d for x in fs)})[:10]
    for i, d in enumerate(dirs):
        f = sorted(x for x in os.listdir(d) if os.path.isfile(os.path.join(d, x)))[0]
        with open(os.path.join(d, f), "a") as fh:
            fh.write(f"edit {i}\n")
    edit = json.loads(sh(snap))
    r["edit10_bytes_uploaded"] = edit["bytes_uploaded"]
    r["edit10_secs"] = edit["duration_secs"]
    r["nochange_secs"] = nochange["duration_secs"]
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return r


def rep(args, i, src):
    root = os.path.join(args.work, f"agent-rep{i}")
    subprocess.run(["rm", "-rf", root], check=True)
    os.makedirs(root)
    ws, store, base, cache = (os.path.join(root, n) for n in ("ws", "store", "jobs", "cache"))
    r = {}
    r["cp_a"] = timed(f"cp -a {src} {ws}")
    sh(f"git clone -q --bare {ws} {root}/remote.git && git -C {ws} remote add origin {root}/remote.git "
       f"&& git -C {ws} fetch -q origin && git -C {ws} branch -q --set-upstream-to=origin/main main")
    # A working checkout has a current index (cp -a gave every file a new inode and ctime).
    sh(f"git -C {ws} status --porcelain >/dev/null")
    ws_id = f"bench:{i}"
    # Drain: a first snapshot (and git capture with its bundle), then 0.1% uncommitted changes, then SIGTERM.
    log = os.path.join(root, "agent-drain.log")
    p = start_agent(agent_args(ws, store, ws_id, base, cache, "--first-after 0 --interval 3600 --debounce 3600000 --git-interval 3600"), log)
    wait_event(log, "snapshot_durable", timeout=900)
    sh(f"python3 {SHARED}/mutate.py {ws} --round {i + 1} --no-git")
    sh("sync")
    time.sleep(args.settle)
    t = time.monotonic()
    p.send_signal(signal.SIGTERM)
    code = p.wait(timeout=120)
    r["drain"] = time.monotonic() - t
    r["drain_exit"] = code
    steps = {e[1]["step"]: e[1]["ms"] for e in log_events(log, "drain_step")}
    r["drain_steps"] = steps
    r["wip_on_remote"] = sh(f"git -C {root}/remote.git log -1 --format=%s main").strip().startswith("berth: work in progress")
    # Restore: berth agent init into an empty directory, against cp -a of the same tree.
    fresh = os.path.join(root, "fresh")
    sh("sync")
    time.sleep(args.settle)
    # Both start from a cold page cache: cp -a reads the tree, init reads the store.
    r["cp_a_again"] = timed(f"cp -a {ws} {root}/copy", cold=True)
    time.sleep(args.settle)
    r["init"] = timed(f"{BERTH} agent init {agent_args(fresh, store, ws_id, base, root + '/cache2')}", cold=True)
    r["status_first"] = timed("git status --porcelain >/dev/null", cwd=fresh)
    r["status_warm"] = timed("git status --porcelain >/dev/null", cwd=fresh)
    same = sh("git status --porcelain", cwd=fresh) == sh("git status --porcelain", cwd=ws)
    r["status_same"] = same
    plain = os.path.join(root, "plain")
    sh(f"{BERTH} snapshot restore --store file://{store} --workspace {ws_id} --no-default-excludes --no-cache {plain}")
    r["status_first_plain_restore"] = timed("git status --porcelain >/dev/null", cwd=plain)
    shutil.rmtree(plain, ignore_errors=True)
    shutil.rmtree(f"{root}/copy", ignore_errors=True)
    # RPO: a writer every 100 ms; then idle CPU.
    log = os.path.join(root, "agent-rpo.log")
    p = start_agent(agent_args(fresh, store, ws_id, base, root + "/cache2", "--first-after 3600 --interval 60"), log)
    wait_event(log, "init_phase", pred=lambda f: f.get("phase") == "ready")
    time.sleep(2)
    changes = []
    probe = os.path.join(fresh, "docs", "rpo_probe.txt")
    stop_at = time.time() + args.rpo_secs
    n = 0
    while time.time() < stop_at:
        n += 1
        with open(probe + ".tmp", "w") as f:
            f.write(f"change {n}\n")
        os.rename(probe + ".tmp", probe)
        changes.append(time.time())
        time.sleep(0.1)
    time.sleep(4)
    snaps = [(ts - f["secs"], ts) for ts, f in log_events(log, "snapshot_durable") if not f.get("unchanged")]
    lat = []
    for c in changes:
        after = [end for start, end in snaps if start >= c]
        if after:
            lat.append(min(after) - c)
    lat.sort()
    r["rpo_changes"] = len(changes)
    r["rpo_saved"] = len(lat)
    r["rpo_p50"] = lat[len(lat) // 2] if lat else None
    r["rpo_p95"] = lat[int(len(lat) * 0.95)] if lat else None
    r["rpo_max"] = lat[-1] if lat else None
    r["rpo_snapshots"] = len(snaps)
    c0 = cpu_secs(p.pid)
    time.sleep(args.idle_secs)
    r["idle_cpu_pct"] = (cpu_secs(p.pid) - c0) / args.idle_secs * 100
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=120)
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return r


def med(rs, k):
    vals = [r[k] for r in rs if r.get(k) is not None]
    return statistics.median(vals) if vals else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--work", default=os.path.join(REPO, "bench-work"), type=os.path.abspath)
    ap.add_argument("--settle", type=float, default=5.0)
    ap.add_argument("--rpo-secs", type=int, default=30)
    ap.add_argument("--idle-secs", type=int, default=30)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--churn", action="store_true", help="run only the churn case (one rep)")
    ap.add_argument("--churn-secs", type=int, default=60)
    ap.add_argument("--json")
    args = ap.parse_args()
    if not os.path.exists(BERTH):
        sys.exit(f"{BERTH} is missing: run `cargo build --release -p berth` first")
    src = corpus(args.work, args.scale)
    if args.churn:
        r = churn(args, src)
        print(json.dumps(r, indent=2))
        return
    rs = []
    for i in range(args.reps):
        r = rep(args, i, src)
        print(json.dumps(r), file=sys.stderr)
        rs.append(r)
    if args.json:
        json.dump(rs, open(args.json, "w"), indent=2)
    git = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    L = [f"#### Run, {now}", "",
         f"Machine: {os.cpu_count()} CPUs, kernel {platform.release()}; corpus make_corpus.py --scale {args.scale:g} --seed 42; "
         f"berth {git}; {args.reps} reps, medians (min-max).", ""]
    def row(name, k, unit="s", fmt="{:.2f}"):
        vals = [r[k] for r in rs if r.get(k) is not None]
        lo, hi = (min(vals), max(vals)) if vals else (float("nan"),) * 2
        return f"| {name} | {fmt.format(med(rs, k))} | {fmt.format(lo)}-{fmt.format(hi)} | {unit} |"
    L += ["| case | median | min-max | unit |", "|---|---|---|---|",
          row("SIGTERM to exit (0.1% changed, WIP commit + push + final snapshot)", "drain"),
          row("cp -a of the tree", "cp_a_again"),
          row("berth agent init into an empty directory", "init"),
          row("first git status after init", "status_first"),
          row("warm git status", "status_warm"),
          row("first git status after a plain snapshot restore (no index refresh)", "status_first_plain_restore"),
          row("RPO p50 (change to durable)", "rpo_p50"),
          row("RPO p95 (change to durable)", "rpo_p95"),
          row("RPO max", "rpo_max"),
          row("agent CPU with nothing changing", "idle_cpu_pct", "% of a core", "{:.1f}")]
    steps = {}
    for r in rs:
        for k, v in r["drain_steps"].items():
            steps.setdefault(k, []).append(v)
    L += ["", "Drain steps (median ms): " + ", ".join(f"{k} {statistics.median(v):.0f}" for k, v in steps.items())]
    checks = [
        ("SIGTERM to exit <= 3 s", med(rs, "drain"), med(rs, "drain") <= 3.0),
        ("init <= 1.2x cp -a", med(rs, "init") / med(rs, "cp_a_again"), med(rs, "init") <= 1.2 * med(rs, "cp_a_again")),
        ("first git status after init <= 2x warm", med(rs, "status_first") / med(rs, "status_warm"), med(rs, "status_first") <= 2 * med(rs, "status_warm")),
        ("RPO p95 <= 2 s", med(rs, "rpo_p95"), med(rs, "rpo_p95") <= 2.0),
        ("idle CPU < 10% of a core", med(rs, "idle_cpu_pct"), med(rs, "idle_cpu_pct") < 10),
    ]
    L += ["", "| target | measured | result |", "|---|---|---|"]
    L += [f"| {n} | {v:.2f} | {'met' if ok else '**missed**'} |" for n, v, ok in checks]
    L += ["", f"Every drain exited 0: {all(r['drain_exit'] == 0 for r in rs)}; WIP commit on the remote every time: "
          f"{all(r['wip_on_remote'] for r in rs)}; git status after init equal to the source every time: {all(r['status_same'] for r in rs)}."]
    print("\n".join(L))


if __name__ == "__main__":
    main()
