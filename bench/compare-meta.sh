#!/usr/bin/env bash
# Metadata rates, measured in one run on this host over the same backing filesystem:
#   passthrough  libfuse's passthrough_ll example over a local directory (the FUSE baseline)
#   sshfs        sshfs to this host's sshd on loopback (bench/setup-sshfs installs it)
#   pohmelfs2    two pohmelfs-servers on loopback, one mount replicating to both
#   gluster2     GlusterFS replica 2, two bricks on this host (bench/setup-gluster installs it)
# Each target runs `pohmelfs-bench fs` with --files FILES and an untar of /usr/include (taken
# from this host without its symlinks; about 9,000 entries here). Prints create, stat, unlink and untar rates and the
# ratios of pohmelfs2 to each baseline. Missing baselines are skipped. JSON lines go to
# $OUT/results.jsonl. Needs root. Usage: bench/compare-meta.sh [FILES]
set -euo pipefail
cd "$(dirname "$0")/.."
top=$(pwd)
. bench/lib.sh
ci/build >/dev/null
files=${1:-5000}
OUT=${OUT:-/tmp/pohmelfs-meta}
base=${BASE:-/var/tmp/pohmelfs-meta}
trap cleanup_bench EXIT
cleanup_bench
rm -rf "$base"
mkdir -p "$OUT" "$base"/{pt-back,exp-a,exp-b,ssh-back,brick1,brick2} \
  "$base"/{mnt-pt,mnt-pf,mnt-ssh,mnt-gluster}
: >"$OUT/results.jsonl"
pids=""
# /usr/include without its few symlinks: passthrough_ll cannot set the times of a symlink, which
# makes tar fail there.
tarball=$base/usr-include.tar
(cd /usr && find include -type f -o -type d) >"$base/usr-include.list"
tar -cf "$tarball" -C /usr --no-recursion -T "$base/usr-include.list"
opts=(--files "$files" --size-mib 8 --rand-reads 100 --untar "$tarball")

src=/usr/share/doc/libfuse3-dev/examples/passthrough_ll.c
pt=$top/build/passthrough_ll
if [ ! -x "$pt" ] || [ "$src" -nt "$pt" ]; then
  gcc -O2 -Wall "$src" -I/usr/share/doc/libfuse3-dev/examples $(pkg-config --cflags --libs fuse3) -o "$pt"
fi
"$pt" -o source="$base/pt-back" "$base/mnt-pt"

start_server "$base/exp-a" "$OUT/server-a.log" && a=$uri
start_server "$base/exp-b" "$OUT/server-b.log" && b=$uri
build/bin/pohmelfs-mount "$a,$b" "$base/mnt-pf"

key=/root/.ssh/pohmelfs-bench
if command -v sshfs >/dev/null && [ -x /usr/sbin/sshd ] && [ -f "$key" ]; then
  mkdir -p /run/sshd
  /usr/sbin/sshd -p 2299 -o ListenAddress=127.0.0.1 -o PermitRootLogin=prohibit-password \
    -o PidFile="$base/sshd.pid" -D </dev/null >"$OUT/sshd.log" 2>&1 &
  pids="$pids $!"
  for _ in $(seq 1 50); do ssh -q -i "$key" -p 2299 -o StrictHostKeyChecking=no \
    -o UserKnownHostsFile=/dev/null -o BatchMode=yes root@127.0.0.1 true && break; sleep 0.1; done
  sshfs -p 2299 -o IdentityFile="$key",StrictHostKeyChecking=no,UserKnownHostsFile=/dev/null \
    root@127.0.0.1:"$base/ssh-back" "$base/mnt-ssh"
  ssh_ok=1
else
  echo "sshfs not set up (bench/setup-sshfs does it): skipping sshfs" >&2
fi

start_gluster pfmeta "$base/brick1" "$base/brick2" "$base/mnt-gluster"

bench_fs passthrough "$base/mnt-pt" "$OUT/results.jsonl" "${opts[@]}"
bench_fs pohmelfs2 "$base/mnt-pf" "$OUT/results.jsonl" "${opts[@]}"
[ -z "${ssh_ok:-}" ] || bench_fs sshfs "$base/mnt-ssh" "$OUT/results.jsonl" "${opts[@]}"
[ -z "${gluster:-}" ] || bench_fs gluster2 "$base/mnt-gluster" "$OUT/results.jsonl" "${opts[@]}"

python3 - "$OUT/results.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = {}
for r in rows:
    by.setdefault(r["test"], {})[r["target"]] = r["rate"]
targets = ["passthrough", "sshfs", "gluster2", "pohmelfs2"]
print(f'{"test":<10}' + "".join(f"{t:>13}" for t in targets) +
      "".join(f"{'pf/' + t[:6]:>12}" for t in targets[:3]))
for test in ("create", "stat", "unlink", "untar"):
    t = by.get(test, {})
    vals = [t.get(k) for k in targets]
    line = f"{test:<10}" + "".join(f"{v:>13.1f}" if v else f"{'-':>13}" for v in vals)
    pf = t.get("pohmelfs2")
    for k in targets[:3]:
        line += f"{pf / t[k]:>12.2f}" if pf and t.get(k) else f"{'-':>12}"
    print(line)
PY
