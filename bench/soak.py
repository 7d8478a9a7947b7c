#!/usr/bin/env python3
"""Soak of the sandbox agent's persistence on the shared corpus, then its scheduled upkeep, in one run:

  soak      a writer appends to one of 20 files every 100 ms under `berth agent run --interval 2`
            (no control plane, so the agent runs retention and prune itself) until the agent has
            published --snapshots snapshots; the agent's CPU (its own and its waited-for
            children's) over the soak, store growth per snapshot before any prune could delete
  upkeep    the writer stops; the agent's own schedule applies the default retention policy
            (keep-last=10,hourly=24,daily=7,weekly=4) every --retention-interval and prunes every
            --prune-interval with --prune-grace 0, until a prune after the last retention run
            deleted what it had marked; then the store's size against one full snapshot of the
            same tree in a fresh store (plus the changes the kept snapshots hold)
  reads     side by side on the soaked store and on the one-snapshot store, alternating:
            `snapshot ls` and a restore of the latest into an empty directory (medians of --reps)

The retention and prune periods are shortened (defaults 10 min and off for a standalone agent) so
that the upkeep happens within the run; the policy is the default one.

Usage:
  cargo build --release -p berth --target-dir target-rel
  BERTH_BIN=target-rel/release/berth python3 bench/soak.py [--scale 1] [--snapshots 2000]
  (BERTH_BENCH_SHARED=DIR names the directory of make_corpus.py when it is not ../shared/bench)
"""
import argparse
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
sys.path.insert(0, HERE)
import agent as a  # noqa: E402  (the agent benchmark's helpers: corpus, agent runs, log events)

if os.environ.get("BERTH_BIN"):
    a.BERTH = os.path.abspath(os.environ["BERTH_BIN"])
if os.environ.get("BERTH_BENCH_SHARED"):
    a.SHARED = os.environ["BERTH_BENCH_SHARED"]


def secs(duration):
    """Seconds of a duration as berth's flags read it (`90s`, `2m`, `1h`)."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    return int(duration[:-1]) * units[duration[-1]] if duration[-1] in units else int(duration)


def writer(files, stop):
    n = 0
    while not stop.is_set():
        n += 1
        with open(files[n % len(files)], "a") as f:
            f.write(f"{n}\n")
        time.sleep(0.1)


def published(log):
    return [f for _, f in a.log_events(log, "snapshot_durable") if not f.get("unchanged")]


def timed_median(cmds, reps):
    """Runs each command of `cmds` in turn, `reps` times, alternating; returns each one's median."""
    times = [[] for _ in cmds]
    for _ in range(reps):
        for i, c in enumerate(cmds):
            times[i].append(a.timed(c() if callable(c) else c))
    return [statistics.median(t) for t in times]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--scale", type=float, default=1)
    p.add_argument("--snapshots", type=int, default=2000)
    p.add_argument("--retention-interval", default="60s")
    p.add_argument("--prune-interval", default="90s")
    p.add_argument("--min-gap", default="1s")
    p.add_argument("--max-soak-secs", type=int, default=3000)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--work", default=os.path.join(a.REPO, "bench-work"))
    p.add_argument("--keep", action="store_true")
    args = p.parse_args()
    src = a.corpus(args.work, args.scale)
    root = os.path.join(args.work, "soak")
    subprocess.run(["rm", "-rf", root], check=True)
    os.makedirs(root)
    ws, store, base, cache = (os.path.join(root, n) for n in ("ws", "store", "jobs", "cache"))
    a.sh(f"cp -a {src} {ws}")
    log = os.path.join(root, "agent.log")
    extra = (f"--first-after 0 --interval 2 --min-gap {args.min_gap} --retention-interval {args.retention_interval} "
             f"--prune-interval {args.prune_interval} --prune-grace 0s")
    started = time.time()
    agent = a.start_agent(a.agent_args(ws, store, "bench:soak", base, cache, extra), log)
    a.wait_event(log, "snapshot_durable", timeout=1800)
    first_size, first_n = a.store_bytes(store), len(published(log))
    r = {"first_snapshot_secs": time.time() - started, "one_full_store_in_soak": first_size}
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(os.path.join(ws, "docs")) for f in fs)[:20]
    stop = threading.Event()
    t = threading.Thread(target=writer, args=(files, stop))
    c0, t0 = a.cpu_secs(agent.pid, children=True), time.time()
    t.start()
    # Store growth per snapshot over the soak's first minute, before a prune could delete anything.
    time.sleep(min(60, secs(args.prune_interval) - 5))
    n1 = len(published(log)) - first_n
    r["growth_per_snapshot_first_minute"] = (a.store_bytes(store) - first_size) / max(n1, 1)
    while len(published(log)) - first_n < args.snapshots and time.time() - t0 < args.max_soak_secs:
        time.sleep(1)
        if agent.poll() is not None:
            raise RuntimeError(f"the agent exited during the soak; see {log}")
    stop.set()
    t.join()
    wall = time.time() - t0
    r["soak_secs"] = wall
    r["soak_snapshots"] = len(published(log)) - first_n
    r["soak_cpu_pct"] = (a.cpu_secs(agent.pid, children=True) - c0) / wall * 100
    r["store_after_soak"] = a.store_bytes(store)
    # Upkeep: wait for a retention run after the last snapshot, then two prunes after it (mark,
    # then delete what is still unreferenced).
    last = time.time()
    a.wait_event(log, "snapshot_durable", pred=lambda f: f.get("unchanged"), timeout=120)
    deadline = time.time() + 900
    while True:
        ret = [ts for ts, _ in a.log_events(log, "retention_applied") if ts > last]
        prunes = [f for ts, f in a.log_events(log, "prune_done") if ret and ts > ret[0]]
        if len(prunes) >= 2:
            break
        if time.time() > deadline:
            raise RuntimeError(f"no retention and two prunes after the soak within 900 s; see {log}")
        time.sleep(1)
    r["retention_runs"] = len(a.log_events(log, "retention_applied"))
    r["forgotten_total"] = sum(f["forgotten"] for _, f in a.log_events(log, "retention_applied"))
    r["prunes"] = len(a.log_events(log, "prune_done"))
    r["prune_bytes_deleted"] = sum(f["bytes_deleted"] for _, f in a.log_events(log, "prune_done"))
    r["last_prune_ms"] = a.log_events(log, "prune_done")[-1][1]["duration_ms"]
    agent.send_signal(signal.SIGTERM)
    agent.wait(timeout=120)
    r["store_after_upkeep"] = a.store_bytes(store)
    ls = json.loads(a.sh(f"{a.BERTH} snapshot ls --store file://{store} --workspace bench:soak --json"))
    r["snapshots_kept"] = len(ls)
    # One full snapshot of the same tree in a fresh store.
    single = os.path.join(root, "single")
    a.sh(f"{a.BERTH} snapshot create --store file://{single} --workspace bench:soak --no-cache "
         f"--no-default-excludes --budget unlimited --json {ws}")
    r["one_full_store"] = a.store_bytes(single)
    r["store_vs_one_full"] = r["store_after_upkeep"] / r["one_full_store"]
    # The changes the kept snapshots hold, at most: one snapshot's growth for each but the first.
    r["kept_changes_bound"] = (r["snapshots_kept"] - 1) * r["growth_per_snapshot_first_minute"]
    r["target_bytes"] = 1.2 * r["one_full_store"] + r["kept_changes_bound"]
    ls_cmd = f"{a.BERTH} snapshot ls --store file://{{}} --workspace bench:soak --json"
    r["ls_soaked"], r["ls_single"] = timed_median([ls_cmd.format(store), ls_cmd.format(single)], args.reps)
    n = [0]

    def restore(s):
        def cmd():
            n[0] += 1
            target = os.path.join(root, f"restore-{n[0]}")
            return f"{a.BERTH} snapshot restore --store file://{s} --workspace bench:soak --no-cache {target}"
        return cmd

    r["restore_soaked"], r["restore_single"] = timed_median([restore(store), restore(single)], args.reps)
    for i in range(1, n[0] + 1):
        shutil.rmtree(os.path.join(root, f"restore-{i}"), ignore_errors=True)
    # verify --read-data and a diff of the two newest snapshots on the soaked store, and a
    # prune plan over it (compare with the engine's figures at scale 1).
    soaked = f"--store file://{store} --workspace bench:soak"
    ids = [x["id"] for x in sorted(ls, key=lambda x: (x["record"]["epoch"], x["record"]["seq"]))]
    r["verify_read_data_soaked"], r["verify_read_data_single"] = timed_median(
        [f"{a.BERTH} snapshot verify {soaked} --read-data",
         f"{a.BERTH} snapshot verify --store file://{single} --workspace bench:soak --read-data"], 1)
    if len(ids) >= 2:
        r["diff_two_newest"] = a.timed(f"{a.BERTH} snapshot diff {soaked} {ids[-2][:12]} {ids[-1][:12]}")
    r["prune_dry_run"] = a.timed(f"{a.BERTH} snapshot prune --store file://{store} --dry-run")
    # A 10-file edit over 10 directories against a no-change snapshot (same store and cache).
    snap = (f"{a.BERTH} snapshot create {soaked} --cache-dir {cache} --no-default-excludes "
            f"--budget unlimited --json {ws}")
    json.loads(a.sh(snap))
    nochange = json.loads(a.sh(snap))
    dirs = sorted({d for d, _, fs in os.walk(ws) if fs and "/.git" not in d and "/.berth" not in d})[:10]
    for i, d in enumerate(dirs):
        f = sorted(x for x in os.listdir(d) if os.path.isfile(os.path.join(d, x)))[0]
        with open(os.path.join(d, f), "a") as fh:
            fh.write(f"edit {i}\n")
    edit = json.loads(a.sh(snap))
    r["edit10_bytes_uploaded"] = edit["bytes_uploaded"]
    r["edit10_secs"], r["nochange_secs"] = edit["duration_secs"], nochange["duration_secs"]
    r["machine"] = f"{platform.node()} {os.cpu_count()} CPUs, load {os.getloadavg()}"
    print(json.dumps(r, indent=2))
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
