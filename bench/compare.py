#!/usr/bin/env python3
"""Two berth builds side by side in one run: restore, diff, verify and prune on the shared corpus.

Each build snapshots the same tree into a store of its own (a first snapshot of the corpus, then
one after `mutate.py --round 1`), so each reads the format it writes. Then, alternating the builds
rep by rep (old, new; new, old; ...), on the same machine at the same time:

  restore          `snapshot restore --no-cache` of the latest into an empty directory
  diff             `snapshot diff` of the two snapshots
  verify           `snapshot verify` (every object the snapshots need exists)
  verify_read_data `snapshot verify --read-data` (every chunk read and hashed)
  prune_plan       `snapshot prune --dry-run` after the first snapshot was forgotten
  prune_mark       `snapshot prune --grace 0s` on a fresh copy of that store (marks)
  prune_delete     the same again (deletes what it marked: index rewrite, pack deletions)

and reports each case's median (min-max) and the ratio new/old against the 10% budget.

Usage:
  (cd OLD_CHECKOUT && cargo build --release --bin berth --target-dir .../old)
  (cd NEW_CHECKOUT && cargo build --release --bin berth --target-dir .../new)
  python3 bench/compare.py --old .../old/release/berth --new .../new/release/berth [--scale 1] [--reps 5]
  (--shared DIR or BERTH_BENCH_SHARED names the directory of make_corpus.py when it is not
  ../shared/bench; the corpus is built once into --work and reused)
"""
import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CASES = ["restore", "diff", "verify", "verify_read_data", "prune_plan", "prune_mark", "prune_delete"]
BUDGET = 1.10


def sh(cmd):
    return subprocess.run(cmd, shell=True, check=True, capture_output=True, text=True).stdout


def timed(cmd):
    sh("sync")
    t = time.monotonic()
    subprocess.run(cmd, shell=True, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - t


def load():
    return os.getloadavg()[0]


class Build:
    """One build's store of the two snapshots and its commands."""

    def __init__(self, label, binary, root):
        self.label, self.bin, self.root = label, os.path.abspath(binary), os.path.join(root, label)
        self.store, self.forgotten = os.path.join(self.root, "store"), os.path.join(self.root, "forgotten")
        self.ids = []

    def cmd(self, sub, args, store=None):
        return f"{self.bin} snapshot {sub} --store file://{store or self.store} {args}"

    def snapshot(self, src):
        out = sh(self.cmd("create", f"--workspace w --cache-dir {self.root}/cache --no-default-excludes "
                          f"--budget unlimited --json {src}"))
        self.ids.append(json.loads(out)["snapshot"])

    def stamp(self):
        st = os.stat(self.bin)
        return {"binary": self.bin, "size": st.st_size, "mtime": st.st_mtime}

    def setup(self, trees):
        """Snapshots each tree of `trees` in turn into a fresh store, then makes a copy of the store
        with the first snapshot forgotten (what the prune cases start from). A setup made by the
        same binary is reused (its ids in `setup.json`)."""
        done = os.path.join(self.root, "setup.json")
        if os.path.exists(done):
            with open(done) as f:
                saved = json.load(f)
            if saved["stamp"] == self.stamp():
                self.ids = saved["ids"]
                return
        sh(f"rm -rf {self.root}")
        os.makedirs(self.root)
        for tree in trees:
            self.snapshot(tree)
        sh(f"cp -a {self.store} {self.forgotten}")
        keep = "--keep-last 1 --keep-hourly 0 --keep-daily 0 --keep-weekly 0 --keep-monthly 0"
        sh(self.cmd("forget", f"--workspace w {keep}", self.forgotten))
        with open(done, "w") as f:
            json.dump({"stamp": self.stamp(), "ids": self.ids}, f)

    def run_case(self, case):
        """Times one case; returns seconds."""
        scratch = os.path.join(self.root, "scratch")
        sh(f"rm -rf {scratch}")
        if case == "restore":
            return timed(self.cmd("restore", f"--workspace w --no-cache --no-default-excludes {scratch}"))
        if case == "diff":
            return timed(self.cmd("diff", f"--workspace w {self.ids[0][:16]} {self.ids[1][:16]}"))
        if case == "verify":
            return timed(self.cmd("verify", "--workspace w"))
        if case == "verify_read_data":
            return timed(self.cmd("verify", "--workspace w --read-data"))
        if case == "prune_plan":
            return timed(self.cmd("prune", "--grace 0s --dry-run", self.forgotten))
        if case in ("prune_mark", "prune_delete"):
            sh(f"cp -a {self.forgotten} {scratch}")
            mark = timed(self.cmd("prune", "--grace 0s", scratch))
            if case == "prune_mark":
                return mark
            return timed(self.cmd("prune", "--grace 0s", scratch))
        raise ValueError(case)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--old", help="the baseline build's berth binary")
    p.add_argument("--new", help="the build under test")
    p.add_argument("--old-label", default="old")
    p.add_argument("--new-label", default="new")
    p.add_argument("--scale", type=float, default=1)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--work", default=os.path.join(REPO, "bench-work"))
    p.add_argument("--shared", default=os.environ.get("BERTH_BENCH_SHARED",
                                                      os.path.join(os.path.dirname(REPO), "shared", "bench")))
    p.add_argument("--cases", nargs="+", default=CASES, choices=CASES)
    p.add_argument("--report", action="store_true", help="print the last run's report (also a partial one)")
    p.add_argument("--setup-only", choices=["old", "new"],
                   help="only make that build's stores now (reused by a later run with the same binary)")
    args = p.parse_args()
    if args.report:
        with open(os.path.join(args.work, f"compare-s{args.scale:g}", "results.json")) as f:
            print(report(json.load(f)))
        return
    if not (args.old and args.new):
        p.error("--old and --new name the two builds' binaries")
    corpus = os.path.join(args.work, f"corpus-s{args.scale:g}-seed42")
    if not os.path.isdir(corpus):
        sh(f"python3 {args.shared}/make_corpus.py {corpus} --scale {args.scale} --seed 42")
    root = os.path.join(args.work, f"compare-s{args.scale:g}")
    os.makedirs(root, exist_ok=True)
    # The corpus, then the corpus after one mutation round: each build snapshots both in turn.
    mutated = os.path.join(root, "mutated")
    if not os.path.exists(os.path.join(root, "mutated.done")):
        sh(f"rm -rf {mutated} && cp -a {corpus} {mutated}")
        sh(f"python3 {args.shared}/mutate.py {mutated} --round 1")
        open(os.path.join(root, "mutated.done"), "w").close()
    builds = [Build("old", args.old, root), Build("new", args.new, root)]
    for b in builds:
        if args.setup_only in (None, b.label):
            b.setup([corpus, mutated])
    if args.setup_only:
        return
    times = {b.label: {c: [] for c in args.cases} for b in builds}
    loads = []
    results = {"times": times, "loads": loads, "scale": args.scale, "reps": 0,
               "labels": [args.old_label, args.new_label], "kernel": platform.release(), "cpus": os.cpu_count()}
    for rep in range(args.reps):
        order = builds if rep % 2 == 0 else builds[::-1]
        for case in args.cases:
            for b in order:
                loads.append(load())
                times[b.label][case].append(b.run_case(case))
        # Kept after every rep, so a run cut short still reports what it measured.
        results["reps"] = rep + 1
        with open(os.path.join(root, "results.json"), "w") as f:
            json.dump(results, f, indent=1)
        print(f"rep {rep + 1}/{args.reps} done (load {load():.1f})", file=sys.stderr)
    sh("rm -rf " + " ".join(os.path.join(b.root, "scratch") for b in builds))
    print(report(results))


def report(r):
    old, new = r["labels"]
    lines = [f"Scale {r['scale']:g}, {r['reps']} reps alternating {old} and {new} in one run, {r['cpus']} CPUs; "
             f"load average (1 min) before each timed step: median {statistics.median(r['loads']):.1f}, "
             f"max {max(r['loads']):.1f}.", "",
             f"| case | {old}: median (min-max) | {new}: median (min-max) | {new} / {old} | budget |",
             "|---|---|---|---|---|"]
    for case, a in r["times"]["old"].items():
        b = r["times"]["new"][case]
        ma, mb = statistics.median(a), statistics.median(b)
        ratio = mb / ma if ma > 0 else float("nan")
        verdict = "met" if ratio <= BUDGET else "over"
        lines.append(f"| {case} | {ma:.3f} s ({min(a):.3f}-{max(a):.3f}) | {mb:.3f} s ({min(b):.3f}-{max(b):.3f}) "
                     f"| {ratio:.2f} | <= {BUDGET:.2f}: {verdict} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
