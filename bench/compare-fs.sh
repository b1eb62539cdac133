#!/usr/bin/env bash
# Runs `pohmelfs-bench fs` on three targets in one run, on the same backing filesystem:
#   local        the backing directory itself (no FUSE)
#   passthrough  libfuse's passthrough_ll example over a backing directory (the FUSE baseline)
#   pohmelfs     pohmelfs-server on loopback + pohmelfs-mount over a backing directory
# and prints each test's rate with the ratio pohmelfs / passthrough. JSON lines of every run
# go to $OUT/results.jsonl. Needs root. Usage: bench/compare-fs.sh [pohmelfs-bench fs options]
set -euo pipefail
cd "$(dirname "$0")/.."
top=$(pwd)
. bench/lib.sh
ci/build >/dev/null
OUT=${OUT:-/tmp/pohmelfs-compare}
base=${BASE:-/var/tmp/pohmelfs-compare}
rm -rf "$base"
mkdir -p "$OUT" "$base"/{local,pt-back,pt-mnt,pf-back,pf-mnt}
: >"$OUT/results.jsonl"

# The baseline is built from the example source Debian ships, never downloaded.
src=/usr/share/doc/libfuse3-dev/examples/passthrough_ll.c
pt=$top/build/passthrough_ll
if [ ! -x "$pt" ] || [ "$src" -nt "$pt" ]; then
  gcc -O2 -Wall "$src" -I/usr/share/doc/libfuse3-dev/examples $(pkg-config --cflags --libs fuse3) -o "$pt"
fi

cleanup() {
  fusermount3 -u "$base/pt-mnt" 2>/dev/null || true
  fusermount3 -u "$base/pf-mnt" 2>/dev/null || true
  for p in ${pids:-}; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

"$pt" -o source="$base/pt-back" "$base/pt-mnt"
start_server "$base/pf-back" "$OUT/server.log"
build/bin/pohmelfs-mount "$uri" "$base/pf-mnt"

bench_fs local "$base/local" "$OUT/results.jsonl" "$@"
bench_fs passthrough "$base/pt-mnt" "$OUT/results.jsonl" "$@"
bench_fs pohmelfs "$base/pf-mnt" "$OUT/results.jsonl" "$@"

python3 - "$OUT/results.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = {}
for r in rows:
    by.setdefault(r["test"], {})[r["target"]] = r
print(f'{"test":<14}{"unit":>8}{"local":>12}{"passthrough":>14}{"pohmelfs":>12}{"pohmelfs/pt":>13}')
for test, t in by.items():
    unit = next(iter(t.values()))["unit"]
    vals = [t.get(k, {}).get("rate", float("nan")) for k in ("local", "passthrough", "pohmelfs")]
    ratio = vals[2] / vals[1] if vals[1] else float("nan")
    print(f'{test:<14}{unit:>8}{vals[0]:>12.1f}{vals[1]:>14.1f}{vals[2]:>12.1f}{ratio:>13.2f}')
PY
