# Shell helpers shared by the bench scripts and ci/bench-smoke (source it from the repository
# root).

# start_server EXPORT LOG [LISTEN]: starts pohmelfs-server on a free loopback port (LISTEN,
# tcp://127.0.0.1:0 by default), waits (bounded) until it listens, sets $uri to its address and
# appends its pid to $pids. It serves loopback peers only; $SERVER_ARGS adds options (--key...).
start_server() {
  # SERVER_WRAP: a command the server runs under (e.g. "taskset -c 0"); empty by default.
  # shellcheck disable=SC2086
  ${SERVER_WRAP:-} "${BIN:-build/bin}/pohmelfs-server" --export "$1" --listen "${3:-tcp://127.0.0.1:0}" \
    --allow 127.0.0.0/8=rw ${SERVER_ARGS:-} </dev/null >/dev/null 2>"$2" &
  pids="${pids:-} $!"
  for _ in $(seq 1 100); do grep -q "listening on" "$2" && break; sleep 0.1; done
  uri=$(sed -n 's/.*listening on \([a-z_;+]*:[^ ]*\).*/\1/p' "$2" | head -1)
  [ -n "$uri" ] || {
    echo "start_server: the server did not report listening within 10 s; its log ($2):" >&2
    cat "$2" >&2
    return 1
  }
}

# bench_fs TARGET DIR JSONL [pohmelfs-bench fs options]: runs the file system benchmark in DIR
# and appends its JSON lines to JSONL, each tagged with "target":TARGET.
bench_fs() {
  local target=$1 dir=$2 out=$3
  shift 3
  # CLIENT_WRAP: as SERVER_WRAP, for the benchmark process.
  # shellcheck disable=SC2086
  ${CLIENT_WRAP:-} "${BIN:-build/bin}/pohmelfs-bench" fs "$dir" --json "$@" | sed "s/^{/{\"target\":\"$target\",/" >>"$out"
}

# start_gluster VOLUME BRICK1 BRICK2 MOUNTPOINT: creates, starts and mounts a GlusterFS replica 2
# volume with two bricks on this host, when GlusterFS is installed (bench/setup-gluster); sets
# $gluster to the volume name, or prints why it is skipped and leaves $gluster empty.
# GlusterFS refuses loopback addresses for bricks: the host's first address is used (traffic
# still stays inside the host).
start_gluster() {
  local vol=$1 b1=$2 b2=$3 mnt=$4 host
  gluster=
  host=$(hostname -I 2>/dev/null | awk '{print $1}')
  if ! command -v gluster >/dev/null || [ -z "$host" ] ||
    ! { pgrep -x glusterd >/dev/null || glusterd </dev/null >/dev/null 2>&1; }; then
    echo "GlusterFS not installed (bench/setup-gluster installs it): skipping it" >&2
    return 0
  fi
  for _ in $(seq 1 50); do gluster --mode=script volume info >/dev/null 2>&1 && break; sleep 0.2; done
  gluster --mode=script volume create "$vol" replica 2 "$host:$b1" "$host:$b2" force >/dev/null
  gluster --mode=script volume start "$vol" >/dev/null
  gluster=$vol
  mount -t glusterfs "$host:/$vol" "$mnt"
}

# stop_gluster: stops and deletes the volume start_gluster made, if any.
stop_gluster() {
  [ -n "${gluster:-}" ] || return 0
  gluster --mode=script volume stop "$gluster" force >/dev/null 2>&1 || true
  gluster --mode=script volume delete "$gluster" >/dev/null 2>&1 || true
}

# cleanup_bench: unmounts $base/mnt-*, stops the GlusterFS volume and the processes in $pids.
cleanup_bench() {
  for m in "$base"/mnt-*; do fusermount3 -u "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
  stop_gluster
  for p in ${pids:-}; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
