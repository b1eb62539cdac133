#!/usr/bin/env bash
# The whole file system on each transport, in one run: `pohmelfs-bench fs` (sequential write and
# read, 4 KiB random reads) through a mount of one server and of two replicas, with the server
# and the mount on tcp:// and on ofi+tcp:// (libfabric's tcp provider: reads and replicated
# writes move their data by RMA). Prints MiB/s and the ratio ofi+tcp / tcp. JSON lines go to
# $OUT/results.jsonl. Needs root. Usage: bench/compare-transports.sh [SIZE_MIB]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
ci/build >/dev/null
size=${1:-256}
OUT=${OUT:-/tmp/pohmelfs-transports}
base=${BASE:-/var/tmp/pohmelfs-transports}
trap cleanup_bench EXIT
cleanup_bench
rm -rf "$base"
mkdir -p "$OUT" "$base"
: >"$OUT/results.jsonl"
tar -cf "$base/tiny.tar" -C /etc hostname
for scheme in tcp ofi+tcp; do
  for n in 1 2; do
    target="$scheme-r$n"
    dir=$base/$target
    mkdir -p "$dir/mnt-x"
    list=""
    for i in $(seq 1 "$n"); do
      mkdir -p "$dir/export$i"
      start_server "$dir/export$i" "$OUT/$target-server$i.log" "$scheme://127.0.0.1:0"
      list="$list${list:+,}$uri"
    done
    build/bin/pohmelfs-mount "$list" "$dir/mnt-x"
    # Few files and a tiny tarball: this compares data paths; docs/benchmarks.md has metadata.
    bench_fs "$target" "$dir/mnt-x" "$OUT/results.jsonl" --size-mib "$size" --files 10 \
      --rand-reads 2000 --untar "$base/tiny.tar"
    build/bin/pohmelfsctl servers "$dir/mnt-x" >"$OUT/$target-servers.txt" || true
    fusermount3 -u "$dir/mnt-x"
    for p in $pids; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    pids=""
  done
done

python3 - "$OUT/results.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = {}
for r in rows:
    by.setdefault(r["test"], {})[r["target"]] = r
targets = ["tcp-r1", "ofi+tcp-r1", "tcp-r2", "ofi+tcp-r2"]
print(f'{"test":<14}{"unit":>8}' + "".join(f"{t:>13}" for t in targets) + f'{"ofi/tcp r1":>12}{"ofi/tcp r2":>12}')
for test in ("seq-write", "seq-read", "rand-read-4k"):
    t = by.get(test, {})
    if not t: continue
    unit = next(iter(t.values()))["unit"]
    vals = [t.get(k, {}).get("rate") for k in targets]
    line = f"{test:<14}{unit:>8}" + "".join(f"{v:>13.1f}" if v else f"{'-':>13}" for v in vals)
    for a, b in ((1, 0), (3, 2)):
        line += f"{vals[a] / vals[b]:>12.2f}" if vals[a] and vals[b] else f"{'-':>12}"
    print(line)
PY
