#!/usr/bin/env bash
# What piled-up index objects cost a restore, and what a prune's compaction gives back.
#
# RUNS snapshot runs of a small corpus tree (make_corpus.py --scale 0.05, one line appended per
# run, so each run adds one index object), then `restore --no-cache` (median of 3, into /dev/shm so
# the disk's inode reuse does not time itself), a prune with --grace 24h (it deletes nothing and
# compacts the index objects into one), and the same restores again.
#
# Usage: bench/index_pileup.sh STORE_URL [RUNS]          (default 1000 runs)
#   file store: bench/index_pileup.sh file://$PWD/bench-work/pileup/store
#   S3 (moto):  ./dev s3 -- sh -c 'curl -sX PUT $BERTH_TEST_S3_ENDPOINT/pileup >/dev/null;
#                 AWS_ENDPOINT_URL=$BERTH_TEST_S3_ENDPOINT bench/index_pileup.sh s3://pileup 500'
# BERTH_BIN names the build (default target-rel/release/berth); BERTH_BENCH_SHARED the corpus
# generator's directory (default ../shared/bench).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
store=${1:?usage: bench/index_pileup.sh STORE_URL [RUNS]}
runs=${2:-1000}
berth=${BERTH_BIN:-target-rel/release/berth}
shared=${BERTH_BENCH_SHARED:-../shared/bench}
work=bench-work/pileup
out=/dev/shm/berth-pileup-out
[[ -d /dev/shm ]] || out=$work/out
rm -rf "$work/ws" "$work/cache"
mkdir -p "$work"
python3 "$shared/make_corpus.py" "$work/ws" --scale 0.05 --seed 42 >/dev/null
for i in $(seq 1 "$runs"); do
	echo "line $i" >>"$work/ws/churn.txt"
	"$berth" snapshot create --store "$store" --workspace agent:pileup --cache-dir "$work/cache" \
		--no-default-excludes --budget unlimited "$work/ws" >/dev/null
done
restore_median() {
	for _ in 1 2 3; do
		rm -rf "$out"
		local start end
		start=$(date +%s.%N)
		"$berth" snapshot restore --store "$store" --workspace agent:pileup --no-cache "$out" >/dev/null
		end=$(date +%s.%N)
		echo "$end - $start" | bc
	done | sort -n | sed -n 2p
}
echo "$runs snapshot runs; restore --no-cache, median of 3: $(restore_median) s"
"$berth" snapshot prune --store "$store" --grace 24h | tail -n 1
echo "after the prune; restore --no-cache, median of 3: $(restore_median) s"
rm -rf "$out"
