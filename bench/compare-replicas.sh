#!/usr/bin/env bash
# Replication cost, measured in one run on loopback over the same backing filesystem:
#   single     one pohmelfs-server, one mount (the baseline)
#   replica2   two pohmelfs-servers, one mount writing to both
#   gluster2   GlusterFS replica 2 (two bricks on this host), when bench/setup-gluster has
#              installed it (skipped otherwise)
# Prints each test's rate and the ratios replica2/single and gluster2/single; then has two
# mounts of the two-server set read the same file at once and prints how their reads were
# spread over the servers. JSON lines go to $OUT/results.jsonl. Needs root.
# Usage: bench/compare-replicas.sh [pohmelfs-bench fs options, e.g. --size-mib 512]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
ci/build >/dev/null
OUT=${OUT:-/tmp/pohmelfs-replicas}
base=${BASE:-/var/tmp/pohmelfs-replicas}
trap cleanup_bench EXIT
cleanup_bench
rm -rf "$base"
mkdir -p "$OUT" "$base"/{exp-a,exp-b,exp-c,mnt-single,mnt-r2,mnt-r2b,mnt-gluster,brick1,brick2}
: >"$OUT/results.jsonl"
pids=""

start_server "$base/exp-a" "$OUT/server-a.log" && a=$uri
start_server "$base/exp-b" "$OUT/server-b.log" && b=$uri
start_server "$base/exp-c" "$OUT/server-c.log" && c=$uri
build/bin/pohmelfs-mount "$c" "$base/mnt-single"
build/bin/pohmelfs-mount "$a,$b" "$base/mnt-r2"

start_gluster pfbench "$base/brick1" "$base/brick2" "$base/mnt-gluster"

bench_fs single "$base/mnt-single" "$OUT/results.jsonl" "$@"
bench_fs replica2 "$base/mnt-r2" "$OUT/results.jsonl" "$@"
[ -z "${gluster:-}" ] || bench_fs gluster2 "$base/mnt-gluster" "$OUT/results.jsonl" "$@"

python3 - "$OUT/results.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = {}
for r in rows:
    by.setdefault(r["test"], {})[r["target"]] = r
nan = float("nan")
print(f'{"test":<14}{"unit":>8}{"single":>10}{"replica2":>10}{"gluster2":>10}{"r2/single":>11}{"gl2/single":>11}')
for test, t in by.items():
    unit = next(iter(t.values()))["unit"]
    s, r, g = (t.get(k, {}).get("rate", nan) for k in ("single", "replica2", "gluster2"))
    print(f'{test:<14}{unit:>8}{s:>10.1f}{r:>10.1f}{g:>10.1f}{r / s if s else nan:>11.2f}{g / s if s else nan:>11.2f}')
PY

# Two clients reading one file at once from the two-server set.
build/bin/pohmelfs-mount "$a,$b" "$base/mnt-r2b"
dd if=/dev/urandom of="$base/mnt-r2/shared" bs=1M count=256 status=none
start=$(date +%s.%N)
dd if="$base/mnt-r2/shared" of=/dev/null bs=1M status=none &
r1=$!
dd if="$base/mnt-r2b/shared" of=/dev/null bs=1M status=none &
r2=$!
wait $r1 $r2
end=$(date +%s.%N)
python3 -c "print(f'two clients read 2 x 256 MiB in {$end - $start:.2f} s: {512 / ($end - $start):.0f} MiB/s together')"
for m in mnt-r2 mnt-r2b; do
  echo "-- $m"
  build/bin/pohmelfsctl servers "$base/$m"
done
