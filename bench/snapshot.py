#!/usr/bin/env python3
"""Side-by-side benchmark of berth's snapshot engine, restic and tar|zstd.

One run, on one working copy of the deterministic corpus (make_corpus.py from
the shared bench folder), measures in this order:

  anchors  stat walk (find -printf), cp -a into a fresh dir,
           tar | zstd -3 -T0 (output size recorded) and its extraction
  first    restic first backup, berth first snapshot (local directory store),
           berth first snapshot through S3 and restic first backup through S3
           (each rep into a fresh, empty store and a fresh cache)
  nochange restic / berth backup of the unchanged tree
  mutation mutate.py --round i (0.1% of files, +1 MB log, git commit), then
           restic / berth backup, for i = 1..reps
  restore  restic / berth restore into fresh directories; for berth also the
           first snapshot after a restore (fresh dir + fresh cache, restore,
           then snapshot that dir with that cache); every berth restore is
           compared with the source (content of every file, symlink targets,
           directories; modes and mtimes are reported too)

Method (as in run_anchors.py): every timed command runs as
`/usr/bin/time -f '%e %U %S %M' bash -c CMD` after `sync`; the 1-minute load
average is recorded before it; nothing is deleted right before a timed step
(each rep writes into a fresh path, deletions wait for the end of the run) and
every bulk write or delete that precedes timing is followed by a settle pause;
the summary reports medians and min-max over --reps runs.  Wall time is taken
with a monotonic clock around that command (it agrees with %e, at a finer
resolution); user/sys/peak RSS come from /usr/bin/time.

Raw results are appended as JSON lines to WORK/results.jsonl (one `run_id`
per run); the markdown summary is printed and written to WORK/summary.md.

Usage:
  bench/snapshot.py [--scale 1.0] [--reps 3] [--work DIR] [--sections ...]
  bench/snapshot.py --work DIR --summarize [RUN_ID]     # re-render a summary
Sections: anchors restic berth s3 (default: all).  S3 needs an endpoint in
BERTH_TEST_S3_ENDPOINT or S3_ENDPOINT (`./dev s3 -- python3 bench/snapshot.py`).
"""
import argparse
import datetime
import hashlib
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import stat
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SECTIONS = ("anchors", "restic", "berth", "s3")
WORKSPACE = "bench"
RESTIC_PASSWORD = "bench"
MIB = 2 ** 20
q = shlex.quote


def die(msg):
    print(f"snapshot.py: error: {msg}", file=sys.stderr)
    sys.exit(2)


def shared_script(shared, name):
    p = os.path.join(shared, name)
    if not os.path.isfile(p):
        die(f"{p} not found: the shared bench scripts must be beside the repo as ../shared/bench "
            f"(or pass --shared DIR)")
    return p


# ---------------------------------------------------------------- measuring


class Bench:
    def __init__(self, a):
        self.a = a
        self.work = os.path.abspath(a.work)
        self.run_id = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        self.run = os.path.join(self.work, "run")  # everything this run writes, removed at the end
        self.logs = os.path.join(self.work, "logs", self.run_id)
        self.results = os.path.join(self.work, "results.jsonl")
        self.failed = {}  # tool -> reason; a failed tool skips its remaining steps
        self.mismatches = 0  # restores that differ from the source
        os.makedirs(self.logs, exist_ok=True)

    # -- plumbing

    def sh(self, cmd, env=None, check=True):
        """Untimed step; returns its combined output."""
        r = subprocess.run(["bash", "-c", cmd], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, errors="replace")
        if check and r.returncode != 0:
            raise RuntimeError(f"untimed step failed ({r.returncode}): {cmd}\n{r.stdout[-3000:]}")
        return r.stdout

    def record(self, rec):
        rec = dict(rec, run_id=self.run_id, scale=self.a.scale, t=time.time())
        with open(self.results, "a") as f:
            f.write(json.dumps(rec) + "\n")
        return rec

    def settle(self):
        """Let writeback (and ext4 discard after deletions) finish before timing again."""
        self.sh("sync")
        if self.a.settle > 0:
            time.sleep(self.a.settle)

    def timed(self, name, cmd, rep, env=None, prepare=None, extra=None, tool=None):
        """Run CMD under /usr/bin/time after `sync`; append a record; return it.

        A nonzero exit marks TOOL as failed so its dependent steps are skipped."""
        if tool and tool in self.failed:
            return None
        if prepare:
            self.sh(prepare, env=env)
        self.sh("sync")
        with open("/proc/loadavg") as f:
            load1 = float(f.read().split()[0])
        base = os.path.join(self.logs, f"{name}.{rep}")
        tf = base + ".time"
        with open(base + ".out", "w") as out, open(base + ".err", "w") as err:
            err.write(f"$ {cmd}\n")
            err.flush()
            t0 = time.perf_counter()
            p = subprocess.Popen(["/usr/bin/time", "-f", "%e %U %S %M", "-o", tf, "bash", "-c", cmd],
                                 env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                 start_new_session=True)
            try:
                rc = p.wait(timeout=self.a.timeout)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)  # the group of this one command only
                p.wait()
                rc = "timeout"
            wall = time.perf_counter() - t0
        try:
            with open(tf) as f:
                e, user, sysc, rss = f.read().strip().splitlines()[-1].split()
        except (OSError, ValueError, IndexError):
            e, user, sysc, rss = wall, 0, 0, 0
        rec = {"name": name, "rep": rep, "rc": rc, "wall": round(wall, 4),
               "time_e": float(e), "user": float(user), "sys": float(sysc),
               "maxrss_mib": round(int(rss) / 1024, 1), "load1_before": load1, "cmd": cmd,
               "log": base + ".err"}
        js = parse_json_summary(base + ".out")
        if js is not None:
            rec["json"] = js
        if extra and rc == 0:
            rec.update(extra() if callable(extra) else extra)
        self.record(rec)
        status = "" if rc == 0 else f"  RC={rc} (see {base}.err)"
        print(f"  {name:28s} rep{rep} wall={wall:7.3f}s user={rec['user']:.2f} sys={rec['sys']:.2f} "
              f"rss={rec['maxrss_mib']:.0f}MiB load={load1:.2f}{status}", flush=True)
        if rc != 0 and tool:
            self.failed[tool] = f"{name} rep{rep} exited {rc} (see {base}.err)"
            tail = open(base + ".err", errors="replace").read()[-1500:]
            print(f"  !! {tool} failed; its remaining steps are skipped. Last output:\n"
                  + "\n".join("     " + ln for ln in tail.splitlines()), flush=True)
        return rec

    def du(self, path):
        n_bytes = n_files = 0
        for root, _dirs, files in os.walk(path):
            for fn in files:
                st = os.lstat(os.path.join(root, fn))
                n_bytes += st.st_size
                n_files += 1
        return {"store_bytes": n_bytes, "store_files": n_files}

    def size_record(self, store, phase, info):
        rec = self.record(dict({"name": f"size.{store}", "phase": phase}, **info))
        print(f"  size.{store:23s} {phase}: {info.get('store_bytes', 0) / MIB:.2f} MiB in "
              f"{info.get('store_files', '?')} objects", flush=True)
        return rec


def parse_json_summary(path):
    """The last JSON object printed on stdout, if any (whole output first, then line by line)."""
    try:
        text = open(path, errors="replace").read().strip()
    except OSError:
        return None
    if not text:
        return None
    try:
        v = json.loads(text)
        return v if isinstance(v, (dict, list)) else None
    except ValueError:
        pass
    for ln in reversed(text.splitlines()):
        ln = ln.strip()
        if ln.startswith("{"):
            try:
                return json.loads(ln)
            except ValueError:
                continue
    return None


# ---------------------------------------------------------------- corpus and tree checks


def ensure_corpus(b, shared):
    """Build the corpus once per (scale, seed); later runs reuse it."""
    d = os.path.join(b.work, f"corpus-s{b.a.scale:g}-seed{b.a.seed}")
    meta = d + ".json"
    if os.path.isdir(d) and os.path.isfile(meta):
        info = json.load(open(meta))
        print(f"corpus: reusing {d} ({info['n_files']} files, {info['n_bytes'] / MIB:.1f} MiB)", flush=True)
        return d, info
    tmp = d + ".tmp"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    print(f"corpus: building {d} (scale {b.a.scale:g}, seed {b.a.seed}) ...", flush=True)
    t0 = time.time()
    out = b.sh(f"python3 {q(shared_script(shared, 'make_corpus.py'))} {q(tmp)} "
               f"--scale {b.a.scale:g} --seed {b.a.seed}")
    os.rename(tmp, d)
    info = tree_counts(d)
    info.update(scale=b.a.scale, seed=b.a.seed, make_corpus=out.strip().splitlines()[-1:],
                build_secs=round(time.time() - t0, 1))
    with open(meta, "w") as f:
        json.dump(info, f)
    print(f"corpus: {info['n_files']} files, {info['n_dirs']} dirs, {info['n_symlinks']} symlinks, "
          f"{info['n_bytes'] / MIB:.1f} MiB in {info['build_secs']}s", flush=True)
    return d, info


def tree_counts(root):
    n_files = n_dirs = n_links = n_bytes = 0
    for r, dirs, files in os.walk(root):
        n_dirs += len(dirs)
        for name in dirs:
            if os.path.islink(os.path.join(r, name)):
                n_links += 1
                n_dirs -= 1
        for fn in files:
            st = os.lstat(os.path.join(r, fn))
            if stat.S_ISLNK(st.st_mode):
                n_links += 1
            else:
                n_files += 1
                n_bytes += st.st_size
    return {"n_files": n_files, "n_dirs": n_dirs, "n_symlinks": n_links, "n_bytes": n_bytes}


def manifest(root):
    """rel path -> (kind, content key, mode bits, mtime ns) for every entry under root."""
    m = {}
    for r, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(r, name)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                m[rel] = ("symlink", os.readlink(p), None, None)
            elif stat.S_ISDIR(st.st_mode):
                m[rel] = ("dir", None, mode, None)
            elif stat.S_ISREG(st.st_mode):
                h = hashlib.sha256()
                with open(p, "rb") as f:
                    while True:
                        buf = f.read(1 << 20)
                        if not buf:
                            break
                        h.update(buf)
                m[rel] = ("file", h.hexdigest(), mode, st.st_mtime_ns)
            else:
                m[rel] = ("other", stat.S_IFMT(st.st_mode), mode, None)
    return m


def compare_trees(src_manifest, dst_root):
    """OK/MISMATCH on content (files, symlink targets, directories); modes and mtimes as notes."""
    if not os.path.isdir(dst_root):
        return {"ok": False, "problems": [f"{dst_root} does not exist"]}
    dst = manifest(dst_root)
    problems = []
    missing = sorted(set(src_manifest) - set(dst))
    extra = sorted(set(dst) - set(src_manifest))
    if missing:
        problems.append(f"{len(missing)} missing, e.g. {missing[:3]}")
    if extra:
        problems.append(f"{len(extra)} unexpected, e.g. {extra[:3]}")
    differ = [k for k in src_manifest if k in dst and src_manifest[k][:2] != dst[k][:2]]
    if differ:
        problems.append(f"{len(differ)} differ in type or content, e.g. {differ[:3]}")
    common = [k for k in src_manifest if k in dst and src_manifest[k][0] == dst[k][0]]
    mode_diff = [k for k in common if src_manifest[k][2] != dst[k][2]]
    files = [k for k in common if src_manifest[k][0] == "file"]
    mtime_same = sum(1 for k in files if src_manifest[k][3] == dst[k][3])
    mtime_sec = sum(1 for k in files if src_manifest[k][3] // 10**9 == dst[k][3] // 10**9)
    return {"ok": not problems, "problems": problems, "entries": len(src_manifest),
            "mode_differs": len(mode_diff), "mode_differs_eg": mode_diff[:3],
            "files": len(files), "mtime_ns_equal": mtime_same, "mtime_sec_equal": mtime_sec}


# ---------------------------------------------------------------- tools


def find_restic():
    if shutil.which("restic"):
        return True
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("restic not found: installing the Debian package with apt-get ...", flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        r = subprocess.run(["bash", "-c", "apt-get install -y -qq restic || "
                            "(apt-get update -qq && apt-get install -y -qq restic)"],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if r.returncode == 0 and shutil.which("restic"):
            return True
        print(r.stdout[-2000:])
    return False


class S3:
    """An S3 endpoint (moto_server in dev and CI) with one fresh bucket per run."""

    def __init__(self, endpoint, run_id):
        self.endpoint = endpoint.rstrip("/")
        self.bucket = f"berth-bench-{run_id.lower()}"
        self.creds = {
            "AWS_ACCESS_KEY_ID": os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
            "AWS_SECRET_ACCESS_KEY": os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
            "AWS_REGION": os.environ.get("AWS_REGION", os.environ.get("AWS_DEFAULT_REGION", "us-east-1")),
        }
        self.creds["AWS_DEFAULT_REGION"] = self.creds["AWS_REGION"]

    def create_bucket(self, b):
        b.sh(f"curl -sS -f -X PUT {q(self.endpoint + '/' + self.bucket)} -o /dev/null")

    def env(self):
        return dict(os.environ, AWS_ENDPOINT_URL=self.endpoint, AWS_ALLOW_HTTP="true", **self.creds)

    def size(self, prefix):
        try:
            return self._size(prefix)
        except (OSError, ET.ParseError, AttributeError, ValueError) as e:
            print(f"  (cannot list s3://{self.bucket}/{prefix}: {e})", flush=True)
            return {}

    def _size(self, prefix):
        """Sum of object sizes under prefix (unsigned ListObjectsV2, paginated: moto allows it)."""
        total = n = 0
        token = None
        while True:
            qs = {"list-type": "2", "prefix": prefix.rstrip("/") + "/"}
            if token:
                qs["continuation-token"] = token
            url = f"{self.endpoint}/{self.bucket}?{urllib.parse.urlencode(qs)}"
            with urllib.request.urlopen(url, timeout=60) as r:
                root = ET.fromstring(r.read())
            ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
            for c in root.iter(ns + "Contents"):
                total += int(c.find(ns + "Size").text)
                n += 1
            trunc = root.find(ns + "IsTruncated")
            token_el = root.find(ns + "NextContinuationToken")
            if trunc is None or trunc.text != "true" or token_el is None:
                break
            token = token_el.text
        return {"store_bytes": total, "store_files": n}


class Restic:
    def __init__(self, b, name, repo_for_rep, env, local_path_for_rep=None, s3=None, s3_prefix_for_rep=None):
        self.b, self.name, self.repo_for_rep, self.base_env = b, name, repo_for_rep, env
        self.local_path_for_rep, self.s3, self.s3_prefix_for_rep = local_path_for_rep, s3, s3_prefix_for_rep
        self.rep = None

    def env(self, rep):
        return dict(self.base_env, RESTIC_PASSWORD=RESTIC_PASSWORD,
                    RESTIC_REPOSITORY=self.repo_for_rep(rep),
                    RESTIC_CACHE_DIR=os.path.join(self.b.run, f"{self.name}_cache{rep}"))

    def size(self):
        if self.local_path_for_rep:
            return self.b.du(self.local_path_for_rep(self.rep))
        if self.s3:
            return self.s3.size(self.s3_prefix_for_rep(self.rep))
        return {}

    def first(self, src, i):
        self.rep = i
        env = self.env(i)
        return self.b.timed(f"{self.name}.first", f"restic backup -q {q(src)}", i, env=env, tool=self.name,
                            prepare="restic init --repository-version 2 -q",
                            extra=lambda: self.size())

    def again(self, case, src, i):
        return self.b.timed(f"{self.name}.{case}", f"restic backup -q {q(src)}", i,
                            env=self.env(self.rep), tool=self.name, extra=lambda: self.size())

    def restore(self, src, i):
        dst = os.path.join(self.b.run, f"{self.name}_restore{i}")
        rec = self.b.timed(f"{self.name}.restore", f"restic restore -q latest --target {q(dst)}", i,
                           env=self.env(self.rep), tool=self.name)
        return os.path.join(dst, src.lstrip("/")) if rec and rec["rc"] == 0 else None


class Berth:
    def __init__(self, b, name, binary, store_for_rep, env, local_path_for_rep=None, s3=None):
        self.b, self.name, self.binary, self.store_for_rep, self.env = b, name, binary, store_for_rep, env
        self.local_path_for_rep, self.s3 = local_path_for_rep, s3
        self.rep = None

    def cache(self, tag):
        return os.path.join(self.b.run, f"{self.name}_cache_{tag}")

    def cmd(self, sub, store, *args):
        return " ".join([q(self.binary), "snapshot", sub, "--store", q(store),
                         "--workspace", WORKSPACE, *args])

    def size(self):
        if self.local_path_for_rep:
            return self.b.du(self.local_path_for_rep(self.rep))
        if self.s3:
            return self.s3.size(urllib.parse.urlparse(self.store_for_rep(self.rep)).path.lstrip("/"))
        return {}

    def create(self, case, src, i, cache):
        c = self.cmd("create", self.store_for_rep(self.rep), "--cache-dir", q(cache),
                     "--no-default-excludes", "--budget", "unlimited", "--json", q(src))
        return self.b.timed(f"{self.name}.{case}", c, i, env=self.env, tool=self.name,
                            extra=lambda: self.size())

    def first(self, src, i):
        self.rep = i
        return self.create("first", src, i, self.cache(f"first{i}"))

    def again(self, case, src, i):
        return self.create(case, src, i, self.cache(f"first{self.rep}"))

    def restore(self, src, i):
        """Restore into a fresh empty dir with a fresh cache, then snapshot that dir with that cache."""
        dst = os.path.join(self.b.run, f"{self.name}_restore{i}")
        cache = self.cache(f"restore{i}")
        c = self.cmd("restore", self.store_for_rep(self.rep), "--snapshot", "latest",
                     "--cache-dir", q(cache), "--no-default-excludes", "--json", q(dst))
        rec = self.b.timed(f"{self.name}.restore", c, i, env=self.env, tool=self.name,
                           prepare=f"mkdir -p {q(dst)}")
        if not rec or rec["rc"] != 0:
            return None
        self.create("first_after_restore", dst, i, cache)
        return dst

    def verify(self):
        """Context only: one `snapshot verify --read-data` of the final store."""
        c = self.cmd("verify", self.store_for_rep(self.rep), "--read-data", "--json")
        rec = self.b.timed(f"{self.name}.verify_read_data", c, 0, env=self.env)
        if rec and rec["rc"] != 0:
            print(f"  (verify exited {rec['rc']}; see {rec['log']})", flush=True)


# ---------------------------------------------------------------- the run


def run(a):
    shared = os.path.abspath(a.shared)
    mutate = shared_script(shared, "mutate.py")
    sections = a.sections
    berth_bin = os.path.abspath(a.berth)
    if ("berth" in sections or "s3" in sections) and not os.access(berth_bin, os.X_OK):
        die(f"berth binary {berth_bin} not found or not executable.\n"
            f"  Build it first:  cargo build --release -p berth\n"
            f"  or pass --berth PATH, or run only other sections (e.g. --sections anchors restic).")
    for tool in ("/usr/bin/time", "zstd", "tar", "git", "curl"):
        if not shutil.which(tool):
            die(f"{tool} is required (apt-get install time zstd tar git curl)")
    if "restic" in sections and not find_restic():
        die("restic is required for the restic section (apt-get install restic), "
            "or leave it out with --sections")
    ep = os.environ.get("BERTH_TEST_S3_ENDPOINT") or os.environ.get("S3_ENDPOINT")
    skipped = []
    if "s3" in sections and not ep:
        skipped.append("S3 section skipped: no endpoint in BERTH_TEST_S3_ENDPOINT or S3_ENDPOINT")
        print("S3 section SKIPPED: no endpoint (set BERTH_TEST_S3_ENDPOINT or S3_ENDPOINT, e.g. run under "
              "`./dev s3 -- python3 bench/snapshot.py ...`)", flush=True)
        sections = [s for s in sections if s != "s3"]

    b = Bench(a)
    reps = a.reps
    s3 = None
    if "s3" in sections:
        s3 = S3(ep, b.run_id)
        try:
            s3.create_bucket(b)
        except RuntimeError as e:
            skipped.append(f"S3 section skipped: cannot create bucket {s3.bucket} at {ep}")
            print(f"S3 section SKIPPED: cannot create bucket {s3.bucket} at {ep}: {e}", flush=True)
            sections = [s for s in sections if s != "s3"]
            s3 = None
    head = machine_info()
    head.update(scale=a.scale, seed=a.seed, reps=reps, settle=a.settle, sections=sections, skipped=skipped,
                berth=berth_bin if ("berth" in sections or "s3" in sections) else None,
                versions=tool_versions(berth_bin, sections))
    print(f"== berth snapshot bench {b.run_id}: scale {a.scale:g}, reps {reps}, sections {' '.join(sections)}; "
          f"{head['nproc']} cpus, {head['mem_gib']} GiB, load {head['loadavg']}", flush=True)

    pristine, corpus = ensure_corpus(b, shared)
    b.record({"name": "header", **head, "corpus": corpus})

    if os.path.exists(b.run):
        print(f"removing leftovers of an earlier run in {b.run} ...", flush=True)
        shutil.rmtree(b.run)
        b.settle()
    os.makedirs(b.run)
    src = os.path.join(b.run, "src")
    print(f"working copy: cp -a corpus -> {src}; settle {a.settle}s", flush=True)
    b.sh(f"cp -a {q(pristine)} {q(src)}")
    b.settle()
    b.sh(f"find {q(src)} -type f -print0 | xargs -0 -n 2000 cat > /dev/null")  # page cache warm

    # tools taking part; S3 ones only in the first-snapshot phase
    full, first_only = [], []
    if "restic" in sections:
        full.append(Restic(b, "restic", lambda i: os.path.join(b.run, f"restic_repo{i}"), dict(os.environ),
                           local_path_for_rep=lambda i: os.path.join(b.run, f"restic_repo{i}")))
    if "berth" in sections:
        full.append(Berth(b, "berth", berth_bin, lambda i: "file://" + os.path.join(b.run, f"berth_store{i}"),
                          dict(os.environ), local_path_for_rep=lambda i: os.path.join(b.run, f"berth_store{i}")))
    if s3:
        print(f"S3: endpoint {s3.endpoint}, bucket {s3.bucket}", flush=True)
        first_only.append(Berth(b, "berth_s3", berth_bin, lambda i: f"s3://{s3.bucket}/berth{i}", s3.env(), s3=s3))
        if "restic" in sections:
            first_only.append(Restic(b, "restic_s3", lambda i: f"s3:{s3.endpoint}/{s3.bucket}/restic{i}", s3.env(),
                                     s3=s3, s3_prefix_for_rep=lambda i: f"restic{i}"))

    if "anchors" in sections:
        print("== anchors", flush=True)
        for i in range(reps):
            b.timed("anchor.stat_walk", f"find {q(src)} -printf '%s %T@ %C@ %i\\n' > /dev/null", i)
        for i in range(reps):
            dst = os.path.join(b.run, f"cp{i}")
            b.timed("anchor.cp_a", f"cp -a {q(src)} {q(dst)}", i)
        b.settle()
        for i in range(reps):
            out = os.path.join(b.run, f"snap{i}.tar.zst")
            b.timed("anchor.tar_zstd", f"tar -C {q(src)} -cf - . | zstd -q -3 -T0 -o {q(out)}", i,
                    extra=lambda out=out: {"out_bytes": os.path.getsize(out)})
        for i in range(reps):
            out = os.path.join(b.run, f"snap{i}.tar.zst")
            dst = os.path.join(b.run, f"untar{i}")
            b.timed("anchor.tar_zstd_extract", f"zstd -q -d -c {q(out)} | tar -C {q(dst)} -xf -", i,
                    prepare=f"mkdir -p {q(dst)}")
        b.settle()

    if full or first_only:
        print("== first snapshot (fresh store and cache each rep)", flush=True)
        for i in range(reps):
            for t in full + first_only:
                t.first(src, i)
        for t in full + first_only:
            if t.name not in b.failed and t.rep is not None:
                info = t.size()
                if info:
                    b.size_record(t.name, "first", info)

    if full:
        print("== no-change snapshot", flush=True)
        for i in range(reps):
            for t in full:
                t.again("nochange", src, i)

        print("== snapshot after a 0.1% mutation (mutate.py --round i)", flush=True)
        for i in range(reps):
            out = b.sh(f"python3 {q(mutate)} {q(src)} --round {i + 1}")
            print("  " + out.strip().splitlines()[-1], flush=True)
            for t in full:
                t.again("after_mutation", src, i)
        for t in full:
            if t.name not in b.failed:
                b.size_record(t.name, f"after {reps} mutations", t.size())
        b.settle()

        print("== restore into fresh empty directories (+ berth: first snapshot after the restore)", flush=True)
        restored = {t.name: [] for t in full}
        for i in range(reps):
            for t in full:
                d = t.restore(src, i)
                if d:
                    restored[t.name].append((i, d))
        print("== checking restores against the source", flush=True)
        src_m = manifest(src)
        for t in full:
            for i, d in restored[t.name]:
                res = compare_trees(src_m, d)
                if not res["ok"]:
                    b.mismatches += 1
                b.record({"name": f"verify.{t.name}", "rep": i, **res})
                print(f"  verify.{t.name:21s} rep{i} {'OK' if res['ok'] else 'MISMATCH'}: "
                      f"{res.get('entries')} entries; modes differ {res.get('mode_differs')}; "
                      f"mtime equal {res.get('mtime_ns_equal')}/{res.get('files')} files"
                      + ("" if res["ok"] else "; " + "; ".join(res["problems"])), flush=True)
        for t in full:
            if isinstance(t, Berth) and t.name not in b.failed:
                t.verify()

    if not a.keep:
        print(f"removing {b.run} (pass --keep to keep it)", flush=True)
        shutil.rmtree(b.run, ignore_errors=True)
    for name, why in b.failed.items():
        print(f"FAILED: {name}: {why}", flush=True)
    md = summarize(b.work, b.run_id)
    print()
    print(md)
    with open(os.path.join(b.work, "summary.md"), "w") as f:
        f.write(md)
    print(f"(summary written to {os.path.join(b.work, 'summary.md')}; raw results in {b.results}; "
          f"logs in {b.logs})")
    if b.mismatches:
        print(f"MISMATCH: {b.mismatches} restore(s) differ from the source", flush=True)
    return 1 if b.failed or b.mismatches else 0


def machine_info():
    mem = 0
    with open("/proc/meminfo") as f:
        for ln in f:
            if ln.startswith("MemTotal:"):
                mem = int(ln.split()[1]) * 1024
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            for ln in f:
                if ln.startswith("model name"):
                    cpu = ln.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    fs = subprocess.run(["df", "--output=fstype,source", "."], stdout=subprocess.PIPE,
                        stderr=subprocess.DEVNULL, text=True).stdout.split()[-2:]
    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "host": platform.node(), "nproc": os.cpu_count(), "mem_gib": round(mem / 2**30, 1),
            "kernel": platform.release(), "cpu": cpu, "loadavg": load, "fs": " ".join(fs)}


def tool_versions(berth_bin, sections):
    def first_line(cmd):
        try:
            r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=20)
            return (r.stdout.strip().splitlines() or ["?"])[0]
        except (OSError, subprocess.SubprocessError):
            return None
    v = {"zstd": first_line(["zstd", "--version"]), "tar": first_line(["tar", "--version"])}
    if "restic" in sections:
        v["restic"] = first_line(["restic", "version"])
    if "berth" in sections or "s3" in sections:
        v["berth"] = first_line([berth_bin, "--version"])
        v["berth_git"] = first_line(["git", "-C", REPO, "describe", "--always", "--dirty"])
    return v


# ---------------------------------------------------------------- summary

TARGETS = [
    # label, measured case, reference case, factor, strict (<) instead of <=
    ("first snapshot <= 1/2 restic first backup", "berth.first", "restic.first", 0.5, False),
    ("first snapshot <= 1.5x tar\\|zstd -3 -T0", "berth.first", "anchor.tar_zstd", 1.5, False),
    ("no-change snapshot <= 2x stat walk", "berth.nochange", "anchor.stat_walk", 2.0, False),
    ("no-change snapshot <= 1/4 restic no-change", "berth.nochange", "restic.nochange", 0.25, False),
    ("after 0.1% mutation <= 1/4 restic after mutation", "berth.after_mutation", "restic.after_mutation",
     0.25, False),
    ("restore <= 1.2x cp -a", "berth.restore", "anchor.cp_a", 1.2, False),
    ("restore faster than restic restore", "berth.restore", "restic.restore", 1.0, True),
    ("first snapshot after restore <= 1.5x no-change", "berth.first_after_restore", "berth.nochange", 1.5, False),
    ("S3 first snapshot <= 2x local-dir first", "berth_s3.first", "berth.first", 2.0, False),
]
RSS_LIMIT_MIB = 256
ORDER = ["anchor.stat_walk", "anchor.cp_a", "anchor.tar_zstd", "anchor.tar_zstd_extract",
         "restic.first", "restic.nochange", "restic.after_mutation", "restic.restore", "restic_s3.first",
         "berth.first", "berth.nochange", "berth.after_mutation", "berth.restore",
         "berth.first_after_restore", "berth.verify_read_data", "berth_s3.first"]


def load_run(work, run_id=None):
    recs = []
    with open(os.path.join(work, "results.jsonl")) as f:
        for ln in f:
            try:
                recs.append(json.loads(ln))
            except ValueError:
                continue
    if run_id is None:
        ids = [r["run_id"] for r in recs if r.get("name") == "header"]
        if not ids:
            die(f"no run in {work}/results.jsonl")
        run_id = ids[-1]
    return run_id, [r for r in recs if r.get("run_id") == run_id]


def fmt_bytes(n):
    if n >= MIB:
        return f"{n / MIB:.1f} MiB"
    return f"{n / 1024:.1f} KiB" if n >= 1024 else f"{n} B"


NOTE_KEYS = ("unchanged", "files_read", "bytes_read", "bytes_new", "bytes_uploaded",
             "files", "bytes_fetched", "packs_fetched", "files_written", "bytes_written")


def json_notes(js):
    """A few counters from berth's --json summary, whatever of them it prints."""
    if not isinstance(js, dict):
        return ""
    flat = dict(js)
    for k, v in js.items():
        if isinstance(v, dict):
            flat.update({kk: vv for kk, vv in v.items() if kk not in flat})
    out = []
    for k in NOTE_KEYS:
        v = flat.get(k)
        if isinstance(v, bool):
            out.append(f"{k}={str(v).lower()}")
        elif isinstance(v, (int, float)):
            out.append(f"{k}={fmt_bytes(v) if k.startswith('bytes') else v}")
    return ", ".join(out[:5])


def summarize(work, run_id=None):
    run_id, recs = load_run(work, run_id)
    head = next(r for r in recs if r.get("name") == "header")
    corpus = head.get("corpus", {})
    timed = {}
    for r in recs:
        if "wall" in r:
            timed.setdefault(r["name"], []).append(r)
    ok = {k: [r for r in v if r["rc"] == 0] for k, v in timed.items()}
    med = {k: statistics.median(r["wall"] for r in v) for k, v in ok.items() if v}
    sizes = {}
    for r in recs:
        if r.get("name", "").startswith("size."):
            sizes.setdefault(r["name"][5:], []).append(r)
    verifies = [r for r in recs if r.get("name", "").startswith("verify.")]

    L = []
    L.append(f"### berth snapshot benchmark, {head['date']}")
    L.append("")
    L.append(f"Machine: {head['nproc']} CPUs ({head['cpu']}), {head['mem_gib']} GiB RAM, kernel {head['kernel']}, "
             f"filesystem {head.get('fs', '?')}; load average at start {head['loadavg']}.  ")
    L.append(f"Corpus: make_corpus.py --scale {head['scale']:g} --seed {head['seed']}: {corpus.get('n_files')} files, "
             f"{corpus.get('n_dirs')} dirs, {corpus.get('n_symlinks')} symlinks, "
             f"{corpus.get('n_bytes', 0) / MIB:.1f} MiB.  ")
    v = head.get("versions", {})
    L.append("Tools: " + "; ".join(f"{k} `{val}`" for k, val in v.items() if val) + ".  ")
    L.append(f"Run `{run_id}`: {head['reps']} reps per case, settle {head['settle']}s, "
             f"sections {', '.join(head['sections'])}. Wall = median of reps (min-max); "
             "each timed step after `sync`, every snapshot of a rep into a fresh empty store, "
             "every restore into a fresh directory." + "".join(f" **{x}.**" for x in head.get("skipped", [])))
    L.append("")
    L.append("| case | n | wall median (s) | wall min-max (s) | user+sys median (s) | peak RSS (MiB) | notes |")
    L.append("|---|---|---|---|---|---|---|")
    names = [n for n in ORDER if n in timed] + sorted(n for n in timed if n not in ORDER)
    for n in names:
        rs, good = timed[n], ok[n]
        notes = []
        if good:
            w = [r["wall"] for r in good]
            cpu = statistics.median(r["user"] + r["sys"] for r in good)
            cells = f"{statistics.median(w):.3f} | {min(w):.3f}-{max(w):.3f} | {cpu:.2f} | " \
                    f"{max(r['maxrss_mib'] for r in good):.0f}"
        else:
            cells = "FAILED | | | "
        if any("out_bytes" in r for r in good):
            notes.append(f"output {fmt_bytes(good[-1]['out_bytes'])}")
        if good and corpus.get("n_bytes") and n.endswith((".first", "tar_zstd", "cp_a")):
            notes.append(f"{corpus['n_bytes'] / MIB / statistics.median(r['wall'] for r in good):.0f} MiB/s")
        if good and "store_bytes" in good[-1] and n.endswith(".first"):
            notes.append(f"store {fmt_bytes(good[-1]['store_bytes'])}")
        if good and "json" in good[-1]:
            jn = json_notes(good[-1]["json"])
            if jn:
                notes.append(jn)
        bad = [r for r in rs if r["rc"] != 0]
        if bad:
            notes.append("exit codes " + ",".join(str(r["rc"]) for r in bad) + f" (log {bad[0]['log']})")
        if n == "berth.first_after_restore":
            notes.append("restored dir + fresh cache")
        L.append(f"| {n} | {len(good)}/{len(rs)} | {cells} | {'; '.join(notes)} |")

    L.append("")
    L.append("| store | after | size | objects | vs tar.zst |")
    L.append("|---|---|---|---|---|")
    tz = [r["out_bytes"] for r in ok.get("anchor.tar_zstd", []) if "out_bytes" in r]
    tzb = tz[-1] if tz else None
    if tzb:
        L.append(f"| tar \\| zstd -3 | - | {fmt_bytes(tzb)} | 1 | 1.000 |")
    for store in ("restic", "restic_s3", "berth", "berth_s3"):
        for r in sizes.get(store, []):
            ratio = f"{r['store_bytes'] / tzb:.3f}" if tzb and "store_bytes" in r else "n/a"
            L.append(f"| {store} | {r['phase']} | {fmt_bytes(r.get('store_bytes', 0))} | "
                     f"{r.get('store_files', '?')} | {ratio} |")

    L.append("")
    L.append("| target (berth) | berth (s) | reference (s) | ratio | target ratio | result |")
    L.append("|---|---|---|---|---|---|")
    met = missed = 0

    def verdict(good):
        nonlocal met, missed
        if good:
            met += 1
            return "met"
        missed += 1
        return "**missed**"

    for label, case, ref, factor, strict in TARGETS:
        if case not in med or ref not in med:
            why = "; ".join(f"{x} {'failed' if x in timed else 'not run'}" for x in (case, ref) if x not in med)
            cell = lambda x: f"{med[x]:.3f}" if x in med else "-"
            L.append(f"| {label} | {cell(case)} | {cell(ref)} | - | {'<' if strict else '<='} {factor:g} | "
                     f"n/a ({why}) |")
            continue
        ratio = med[case] / med[ref] if med[ref] > 0 else float("inf")
        good = ratio < factor if strict else ratio <= factor
        L.append(f"| {label} | {med[case]:.3f} | {med[ref]:.3f} | {ratio:.2f} | "
                 f"{'<' if strict else '<='} {factor:g} | {verdict(good)} |")
    berth_runs = [r for n, rs in ok.items() if n.startswith("berth") for r in rs]
    if berth_runs:
        peak = max(r["maxrss_mib"] for r in berth_runs)
        L.append(f"| peak RSS of any berth command <= {RSS_LIMIT_MIB} MiB | {peak:.0f} MiB | - | "
                 f"{peak / RSS_LIMIT_MIB:.2f} | <= 1 | {verdict(peak <= RSS_LIMIT_MIB)} |")
    bs = [r for r in sizes.get("berth", []) if r["phase"] == "first"]
    if bs and tzb:
        ratio = bs[-1]["store_bytes"] / tzb
        L.append(f"| store size after first snapshot <= tar\\|zstd -3 output | {fmt_bytes(bs[-1]['store_bytes'])} | "
                 f"{fmt_bytes(tzb)} | {ratio:.3f} | <= 1 | {verdict(ratio <= 1)} |")
    bv = [r for r in verifies if r["name"] == "verify.berth"]
    if bv:
        n_ok = sum(1 for r in bv if r["ok"])
        L.append(f"| every berth restore equals the source | {n_ok}/{len(bv)} OK | - | - | all | "
                 f"{verdict(n_ok == len(bv))} |")
    L.append("")
    if verifies:
        L.append("Restore checks (content of every file, symlink targets, directory set; modes and mtimes noted):")
        L.append("")
        for r in verifies:
            state = "OK" if r["ok"] else "MISMATCH: " + "; ".join(r["problems"])
            L.append(f"- {r['name'][7:]} rep{r['rep']}: {state}; {r.get('entries')} entries, "
                     f"modes differ on {r.get('mode_differs')}, file mtimes equal to the ns on "
                     f"{r.get('mtime_ns_equal')}/{r.get('files')} (to the s on {r.get('mtime_sec_equal')})")
        L.append("")
    L.append(f"Targets: {met} met, {missed} missed.")
    loads = [r["load1_before"] for rs in timed.values() for r in rs]
    if loads:
        L.append(f"Load average (1 min) before timed steps: median {statistics.median(loads):.2f}, "
                 f"max {max(loads):.2f}.")
    return "\n".join(L) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="corpus scale (1.0 = ~1 GiB, ~60k files)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--reps", type=int, default=3, help="runs per case (medians need >= 3)")
    ap.add_argument("--work", default=os.path.join(REPO, "bench-work"), help="work dir (default: bench-work/)")
    ap.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    ap.add_argument("--berth", default=os.path.join(REPO, "target", "release", "berth"), help="berth binary")
    ap.add_argument("--shared", default=os.environ.get("BERTH_BENCH_SHARED",
                                                       os.path.join(REPO, "..", "shared", "bench")),
                    help="folder with make_corpus.py and mutate.py (default ../shared/bench)")
    ap.add_argument("--settle", type=float, default=None,
                    help="seconds to wait after bulk writes/deletes (default: 60 x scale, 2..60)")
    ap.add_argument("--timeout", type=float, default=3600,
                    help="seconds before one timed command is killed and counted as failed (default 3600)")
    ap.add_argument("--keep", action="store_true", help="keep WORK/run (stores, restores) after the run")
    ap.add_argument("--summarize", nargs="?", const="", metavar="RUN_ID",
                    help="only print the summary of RUN_ID (default: the last run) from WORK/results.jsonl")
    a = ap.parse_args()
    if a.summarize is not None:
        print(summarize(os.path.abspath(a.work), a.summarize or None))
        return 0
    if a.reps < 1:
        die("--reps must be >= 1")
    if a.settle is None:
        a.settle = min(60.0, max(2.0, 60.0 * a.scale))
    return run(a)


if __name__ == "__main__":
    sys.exit(main())
