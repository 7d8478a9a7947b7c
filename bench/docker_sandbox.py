#!/usr/bin/env python3
"""Sandbox start latency on the machine's Docker Engine: `berth sandbox start` next to `docker run`.

One run, on the test image (images/test-image), of:

  docker run      `docker run -d --network host IMAGE sh -c 'echo T=$(date +%s%N); sleep 600'`,
                  from the call to the moment the command prints its clock (read back from the
                  container's log); the container is removed afterwards
  cold start      `berth sandbox start OWNER --image IMAGE -- sh -c '...same...'` for a fresh
                  owner each time (a new workspace and volume, nothing to restore), through a
                  `berth serve --substrate docker` with a file:// store; stopped afterwards
  restore alone   `berth snapshot restore --no-cache` of a 100 MiB workspace (100 files of 1 MiB
                  of random bytes, so nothing compresses or deduplicates) inside a container of
                  the image, into its own /workspace, timed by the container's clock around the
                  command; then the same writing the file cache, as the supervisor's restore does
  warm claim      `berth sandbox start OWNER --image IMAGE -- ...` of that 100 MiB workspace with
                  `--warm-pool IMAGE=1`: a claimed warm container restores it from the store, then
                  the command prints its clock; stopped afterwards, and the pool refilled before
                  the next rep

Every time is the median of --reps runs. Where a start's time goes is printed after the table:
when the `berth sandbox start` call returned, when the engine started the container (cold), and
the supervisor's init phases as its log reports them (`init_phase` events). Targets: cold start <= docker run + 300 ms (its restore
is empty); warm claim <= 1.5x the restore alone.

Every container and volume carries berth-test-run=<run id>, removed when the script ends.

Usage:
  cargo build -p berth     # or --release, and pass --berth target/release/berth
  python3 bench/docker_sandbox.py [--reps 5] [--berth target/debug/berth] [--compare-hold]
"""
import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from benchlib import free_port

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
ADMIN = "bench-admin-token-0123456789abcdef"
LABEL = "berth-test-run"
MARK = "echo T=$(date +%s%N); sleep 600"


def now_ns():
    return time.time_ns()


def sh(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])}... exited {r.returncode}: {r.stderr.strip()}")
    return r.stdout.strip()


def mark_of(container, deadline_s=120):
    """The T=<ns> the container's command printed, waiting for it: one `docker logs --follow`
    (polling with a `docker logs` every few ms would start a CLI process each time, CPU taken
    from the very start being timed)."""
    follow = subprocess.Popen(["docker", "logs", "--follow", container], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    timer = threading.Timer(deadline_s, follow.kill)
    timer.start()
    seen = []
    try:
        for line in follow.stdout:
            if line.startswith("T="):
                return int(line[2:])
            seen.append(line)
    finally:
        timer.cancel()
        follow.kill()
        follow.wait()
    sys.exit(f"bench: {container} never printed its mark; logs:\n{''.join(seen)}")


class Server:
    def __init__(self, berth, work, store, image, run, warm, extra=()):
        self.berth = berth
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [berth, "serve", "--substrate", "docker", "--data-dir", os.path.join(work, "data"),
                "--listen", f"127.0.0.1:{self.port}", "--store", f"file://{store}", "--sandbox-network", "host",
                "--sandbox-label", f"{LABEL}={run}", "--gc-interval", "3600s"]
        if warm:
            args += ["--warm-pool", f"{image}={warm}"]
        args += list(extra)
        env = dict(os.environ, BERTH_ADMIN_TOKEN=ADMIN, BERTH_LOG_FORMAT="json")
        self.log = open(os.path.join(work, f"serve-{self.port}.log"), "w")
        self.proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=self.log)
        for _ in range(600):
            try:
                urllib.request.urlopen(f"{self.url}/healthz", timeout=1)
                return
            except OSError:
                time.sleep(0.05)
        sys.exit("bench: berth serve did not come up")

    def cli(self, *args):
        env = dict(os.environ, BERTH_SERVER=self.url, BERTH_TOKEN=ADMIN)
        return sh([self.berth, *args], env=env)

    def start(self, owner, image, run, script, *flags):
        out = self.cli("sandbox", "start", owner, "--image", image, "--label", f"{LABEL}={run}", "--json", *flags,
                       "--", "sh", "-c", script)
        return json.loads(out)

    def stop(self, owner):
        self.cli("sandbox", "stop", owner)

    def idle_warm(self):
        items = json.loads(self.cli("sandbox", "ls", "--json"))["items"]
        return sum(1 for s in items if s["kind"] == "warm" and s["state"] == "running")

    def close(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()


def docker_run(image, run, reps):
    times = []
    for _ in range(reps):
        t0 = now_ns()
        cid = sh(["docker", "run", "-d", "--network", "host", "--label", f"{LABEL}={run}", image, "sh", "-c", MARK])
        times.append((mark_of(cid) - t0) / 1e9)
        sh(["docker", "rm", "-f", cid])
    return times


def started_at_ns(container):
    """When the engine started `container` (its RFC 3339 StartedAt, nanoseconds, on this clock)."""
    ts = sh(["docker", "inspect", "-f", "{{.State.StartedAt}}", container])
    base, _, frac = ts.rstrip("Z").partition(".")
    secs = datetime.datetime.strptime(base, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=datetime.timezone.utc).timestamp()
    return int(secs) * 10**9 + int((frac + "000000000")[:9])


PHASE = re.compile(r'init_phase.*?phase=("?)([\w-]+)\1.*?\bms=(\d+)')


def phases_of(container):
    """The supervisor's init phases and their ms, from its log (`init_phase` events)."""
    logs = subprocess.run(["docker", "logs", container], capture_output=True, text=True)
    out = {}
    for line in (logs.stdout + logs.stderr).splitlines():
        m = PHASE.search(line)
        if m:
            out[m.group(2)] = out.get(m.group(2), 0) + int(m.group(3))
    return out


class Split:
    """Where a start's time goes: the `berth sandbox start` call (control plane, engine), the
    container's start as the engine saw it (cold only), and the supervisor's init phases."""

    def __init__(self):
        self.api, self.started, self.phases = [], [], {}

    def add(self, t0, t_api, container, mark, cold):
        self.api.append((t_api - t0) / 1e9)
        if cold:
            self.started.append((started_at_ns(container) - t0) / 1e9)
        for k, ms in phases_of(container).items():
            self.phases.setdefault(k, []).append(ms / 1e3)

    def lines(self, name):
        out = [f"{name}: the start call returned after {med(self.api) * 1000:.0f} ms (median)"]
        if self.started:
            out.append(f"{name}: the engine started the container {med(self.started) * 1000:.0f} ms after the call")
        for k, xs in self.phases.items():
            out.append(f"{name}: supervisor init phase {k}: {med(xs) * 1000:.0f} ms")
        return out


def cold_starts(server, image, run, reps, split):
    times = []
    for i in range(reps):
        owner = f"bench:cold-{run}-{i}"
        t0 = now_ns()
        s = server.start(owner, image, run, MARK)
        t_api = now_ns()
        mark = mark_of(s["id"])
        times.append((mark - t0) / 1e9)
        split.add(t0, t_api, s["id"], mark, True)
        server.stop(owner)
    return times


SEED = ("i=0; while [ $i -lt 100 ]; do head -c 1048576 /dev/urandom > /workspace/f$i; i=$((i+1)); done; "
        "echo seeded; sleep 600")


def seed(server, image, run, owner):
    # A memory limit skips the warm pool: a cold sandbox writes the workspace; the stop's drain
    # publishes it.
    s = server.start(owner, image, run, SEED, "--memory", "1GiB")
    end = time.time() + 300
    while "seeded" not in subprocess.run(["docker", "logs", s["id"]], capture_output=True, text=True).stdout:
        if time.time() > end:
            sys.exit("bench: the 100 MiB workspace was never written")
        time.sleep(0.2)
    server.stop(owner)


def restores(berth, image, run, store, owner, reps, cache=False):
    """`berth snapshot restore` alone in a container: with `--no-cache` (the reference), or
    writing the file cache to /tmp as a sandbox's supervisor does (`cache`)."""
    times = []
    flag = "--cache-dir /tmp/berth-cache" if cache else "--no-cache"
    script = ("a=$(date +%s%N); /berth/bin/berth snapshot restore {flag} --store file://{store} "
              "--workspace {owner} /workspace >/dev/null; b=$(date +%s%N); echo R=$((b-a))").format(
        flag=flag, store=store, owner=owner)
    for _ in range(reps):
        out = sh(["docker", "run", "--rm", "--network", "host", "--user", "1000:1000", "--label", f"{LABEL}={run}",
                  "-v", f"{os.path.abspath(berth)}:/berth/bin/berth:ro", "-v", f"{store}:{store}", image, "sh", "-c",
                  script])
        r = [l for l in out.splitlines() if l.startswith("R=")]
        times.append(int(r[-1][2:]) / 1e9)
    return times


def warm_claims(server, image, run, owner, reps, split):
    times = []
    for _ in range(reps):
        end = time.time() + 300
        while server.idle_warm() < 1:
            if time.time() > end:
                sys.exit("bench: the warm pool did not refill")
            time.sleep(0.2)
        t0 = now_ns()
        s = server.start(owner, image, run, MARK)
        t_api = now_ns()
        if not s["warm"]:
            sys.exit(f"bench: the start did not claim a warm container: {s}")
        mark = mark_of(s["id"])
        times.append((mark - t0) / 1e9)
        split.add(t0, t_api, s["id"], mark, False)
        server.stop(owner)
    return times


def cleanup(run):
    for kind, ls, rm in (("container", ["docker", "ps", "-aq"], ["docker", "rm", "-f"]),
                         ("volume", ["docker", "volume", "ls", "-q"], ["docker", "volume", "rm", "-f"])):
        names = sh(ls + ["--filter", f"label={LABEL}={run}"]).split()
        if names:
            subprocess.run(rm + names, capture_output=True)


def med(xs):
    return statistics.median(xs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--berth", default=os.path.join(REPO, "target", "debug", "berth"))
    ap.add_argument("--compare-hold", action="store_true",
                    help="also time the warm claims with the pool's refill not held (--warm-refill-hold 0s)")
    a = ap.parse_args()
    berth = os.path.abspath(a.berth)
    image = sh([os.path.join(REPO, "images", "test-image")])
    run = f"bench{os.getpid():x}{int(time.time()) & 0xffffff:x}"
    work = tempfile.mkdtemp(prefix="berth-bench-sandbox-")
    os.chmod(work, 0o755)
    store = os.path.join(work, "store")
    os.mkdir(store)
    os.chown(store, 1000, 1000)
    load = open("/proc/loadavg").read().split()[:3]
    print(f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, "
          f"kernel {platform.release()}, load {' '.join(load)}, image {image}, berth {berth}")
    cold_split, warm_split = Split(), Split()
    try:
        plain = docker_run(image, run, a.reps)
        cold_server = Server(berth, work, store, image, run, 0)
        try:
            cold = cold_starts(cold_server, image, run, a.reps, cold_split)
            owner = f"bench:warm-{run}"
            seed(cold_server, image, run, owner)
        finally:
            cold_server.close()
        alone = restores(berth, image, run, store, owner, a.reps)
        cached = restores(berth, image, run, store, owner, a.reps, cache=True)
        warm_server = Server(berth, work, store, image, run, 1)
        try:
            warm = warm_claims(warm_server, image, run, owner, a.reps, warm_split)
        finally:
            warm_server.close()
        unheld = None
        if a.compare_hold:
            # The same claims with the refill not held: a new warm container starts within a
            # second of each claim, beside its restore.
            unheld_server = Server(berth, work, store, image, run, 1, ["--warm-refill-hold", "0s"])
            try:
                unheld = warm_claims(unheld_server, image, run, owner, a.reps, Split())
            finally:
                unheld_server.close()
    finally:
        cleanup(run)
    rows = [("docker run, to the command running", plain), ("berth sandbox start, cold (empty workspace)", cold),
            ("restore of the 100 MiB workspace alone, in a container", alone),
            ("the same restore writing the file cache (as a sandbox's supervisor does)", cached),
            ("berth sandbox start, warm claim, 100 MiB workspace, to the command running", warm)]
    print("| case | median | min-max |")
    print("|---|---|---|")
    if unheld:
        rows.append(("the same warm claim with the refill not held (--warm-refill-hold 0s)", unheld))
    for name, xs in rows:
        print(f"| {name} | {med(xs) * 1000:.0f} ms | {min(xs) * 1000:.0f}-{max(xs) * 1000:.0f} ms |")
    print(f"cold overhead over docker run: {(med(cold) - med(plain)) * 1000:.0f} ms (target <= 300 ms + the restore)")
    print(f"warm claim / restore alone: {med(warm) / med(alone):.2f}x (target <= 1.5x)")
    if unheld:
        print(f"warm claim, refill not held / restore alone: {med(unheld) / med(alone):.2f}x")
    for line in cold_split.lines("cold") + warm_split.lines("warm"):
        print(line)


if __name__ == "__main__":
    main()
