#!/usr/bin/env bash
# Sequential 1 MiB write and read through a mount on each channel mode, in one run, against one
# server with a cluster key: `pohmelfs-bench fs` (seq-write, then seq-read with the page cache
# dropped) on none, crc32c, hmac-sha256, aes-256-gcm and chacha20-poly1305. Every round runs
# all modes back to back, starting at a different one each round; each mode's ratio to none is taken within its round, and the median
# over ROUNDS rounds is printed (the machine is shared and noisy). JSON lines go to
# $OUT/results.jsonl. Needs root.
# Usage: [ROUNDS=3] [THREADS=1] [MODES="none ..."] [MOUNT_OPTS=...] [BIN=DIR] [PIN=1]
#   bench/compare-crypto.sh [SIZE_MIB]
#   THREADS: crypto threads of the server (--crypto-threads) and the mount (crypto_thread_num).
#   MODES: the modes to run (all five by default; none must be one of them).
#   MOUNT_OPTS: more -o options for every mount (e.g. read_ahead_kb=4096).
#   BIN: the directory of the binaries (to compare two builds); when unset, ci/build builds build/.
#   PIN=1: the server on CPU 0, the mount and the benchmark on CPU 1, as if each side had a
#     host (and its cores) of its own: each pays only its half of the crypto.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
if [ -z "${BIN:-}" ]; then
  ci/build >/dev/null
  BIN=build/bin
fi
export BIN
size=${1:-512}
mount_wrap=
if [ "${PIN:-0}" = 1 ]; then
  export SERVER_WRAP="taskset -c 0" CLIENT_WRAP="taskset -c 1"
  mount_wrap="taskset -c 1"
fi
rounds=${ROUNDS:-3}
threads=${THREADS:-1}
OUT=${OUT:-/tmp/pohmelfs-crypto}
base=${BASE:-/var/tmp/pohmelfs-crypto}
trap cleanup_bench EXIT
cleanup_bench
rm -rf "$base"
mkdir -p "$OUT" "$base/export" "$base/mnt-x"
: >"$OUT/results.jsonl"
tar -cf "$base/tiny.tar" -C /etc hostname
"$BIN/pohmelfsctl" keygen "$base/cluster.key" >/dev/null
SERVER_ARGS="--key $base/cluster.key --crypto-threads $threads" \
  start_server "$base/export" "$OUT/server.log"
modes=${MODES:-none crc32c hmac-sha256 aes-256-gcm chacha20-poly1305}
read -ra mode_list <<<"$modes"
for round in $(seq 1 "$rounds"); do
  # Each round starts at another mode, so that none is not always the first (cold) one.
  for k in $(seq 0 $((${#mode_list[@]} - 1))); do
    mode=${mode_list[$(((k + round - 1) % ${#mode_list[@]}))]}
    $mount_wrap "$BIN/pohmelfs-mount" "$uri" "$base/mnt-x" \
      -o "key=$base/cluster.key,crypto=$mode,crypto_fail_unsupported,crypto_thread_num=$threads${MOUNT_OPTS:+,$MOUNT_OPTS}"
    bench_fs "$mode" "$base/mnt-x" "$OUT/round$round.jsonl" --size-mib "$size" --files 10 \
      --rand-reads 100 --untar "$base/tiny.tar"
    fusermount3 -u "$base/mnt-x"
  done
  sed "s/^{/{\"round\":$round,/" "$OUT/round$round.jsonl" >>"$OUT/results.jsonl"
done

python3 - "$OUT/results.jsonl" "$modes" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
modes = sys.argv[2].split()
rate = {(r["round"], r["target"], r["test"]): r["rate"] for r in rows}
rounds = sorted({r["round"] for r in rows})
print(f'{"test":<10}{"mode":<19}{"MiB/s (median)":>15}{"/ none (median)":>17}   per round')
for test in ("seq-write", "seq-read"):
    for m in modes:
        vals = [rate.get((n, m, test)) for n in rounds]
        ratios = [rate[(n, m, test)] / rate[(n, "none", test)] for n in rounds
                  if rate.get((n, m, test)) and rate.get((n, "none", test))]
        med = statistics.median(v for v in vals if v)
        rmed = statistics.median(ratios) if ratios else float("nan")
        print(f'{test:<10}{m:<19}{med:>15.1f}{rmed:>17.2f}   ' + " ".join(f"{x:.2f}" for x in ratios))
PY
