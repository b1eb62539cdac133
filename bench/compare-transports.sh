#!/usr/bin/env bash
# The whole file system on each transport, in one run: `pohmelfs-bench fs` (sequential write and
# read, 4 KiB random reads) through a mount of one server and of two replicas, with the server
# and the mount on each scheme of SCHEMES (default tcp:// and ofi+tcp://, libfabric's tcp
# provider, where reads and replicated writes move their data by RMA; add ofi+shm for its
# shared-memory provider). Every round runs every setup back to back (in the given order in odd
# rounds, reversed in even ones); the ratio of each scheme to tcp is taken within each round,
# and the medians over the rounds are printed with the ratio of every round (the machine is
# shared and noisy). JSON lines go to $OUT/results.jsonl. Needs root.
# Usage: [ROUNDS=3] [BIN=DIR] [SCHEMES="tcp ofi+tcp"] bench/compare-transports.sh [SIZE_MIB]
#   BIN: the directory of the binaries (to compare two builds); when unset, ci/build builds build/.
#   SCHEMES: must start with tcp (the baseline).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
if [ -z "${BIN:-}" ]; then
  ci/build >/dev/null
  BIN=build/bin
fi
export BIN
size=${1:-256}
rounds=${ROUNDS:-3}
OUT=${OUT:-/tmp/pohmelfs-transports}
base=${BASE:-/var/tmp/pohmelfs-transports}
trap cleanup_bench EXIT
cleanup_bench
rm -rf "$base"
mkdir -p "$OUT" "$base"
: >"$OUT/results.jsonl"
tar -cf "$base/tiny.tar" -C /etc hostname
for round in $(seq 1 "$rounds"); do
  schemes=${SCHEMES:-tcp ofi+tcp}
  [ $((round % 2)) -eq 0 ] && schemes=$(echo "$schemes" | tr ' ' '\n' | tac | tr '\n' ' ')
  : >"$OUT/round.jsonl"
  for scheme in $schemes; do
    for n in 1 2; do
      target="$scheme-r$n"
      dir=$base/$target
      rm -rf "$dir"
      mkdir -p "$dir/mnt-x"
      list=""
      for i in $(seq 1 "$n"); do
        mkdir -p "$dir/export$i"
        start_server "$dir/export$i" "$OUT/$target-server$i.log" "$scheme://127.0.0.1:0"
        list="$list${list:+,}$uri"
      done
      "$BIN/pohmelfs-mount" "$list" "$dir/mnt-x"
      # Few files and a tiny tarball: this compares data paths; docs/benchmarks.md has metadata.
      bench_fs "$target" "$dir/mnt-x" "$OUT/round.jsonl" --size-mib "$size" --files 10 \
        --rand-reads 2000 --untar "$base/tiny.tar"
      "$BIN/pohmelfsctl" servers "$dir/mnt-x" >"$OUT/$target-servers.txt" || true
      fusermount3 -u "$dir/mnt-x"
      for p in $pids; do kill "$p" 2>/dev/null || true; done
      wait 2>/dev/null || true
      pids=""
    done
  done
  sed "s/^{/{\"round\":$round,/" "$OUT/round.jsonl" >>"$OUT/results.jsonl"
done
rm -f "$OUT/round.jsonl"

python3 - "$OUT/results.jsonl" "${SCHEMES:-tcp ofi+tcp}" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
schemes = sys.argv[2].split()
others = [s for s in schemes if s != "tcp"]
rate = {(r["round"], r["target"], r["test"]): r["rate"] for r in rows}
unit = {r["test"]: r["unit"] for r in rows}
rounds = sorted({r["round"] for r in rows})
targets = [f"{s}-r{n}" for n in (1, 2) for s in schemes]
ratios = [(f"{s}-r{n}", f"tcp-r{n}") for n in (1, 2) for s in others]
print(f'{"test":<14}{"unit":>8}' + "".join(f"{t:>13}" for t in targets)
      + "".join(f'{a.split("-r")[0] + "/tcp r" + a[-1]:>18}' for a, _ in ratios)
      + "   per round")
for test in ("seq-write", "seq-read", "rand-read-4k"):
    if test not in unit: continue
    meds = []
    for t in targets:
        v = [rate[(n, t, test)] for n in rounds if rate.get((n, t, test))]
        meds.append(statistics.median(v) if v else None)
    line = f"{test:<14}{unit[test]:>8}" + "".join(f"{v:>13.1f}" if v else f"{'-':>13}" for v in meds)
    per = []
    for a, b in ratios:
        r = [rate[(n, a, test)] / rate[(n, b, test)] for n in rounds
             if rate.get((n, a, test)) and rate.get((n, b, test))]
        line += f"{statistics.median(r):>18.2f}" if r else f"{'-':>18}"
        per.append(" ".join(f"{x:.2f}" for x in r))
    print(line + "   " + "; ".join(per))
PY
