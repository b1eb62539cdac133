# Shell helpers shared by the bench scripts and ci/bench-smoke (source it from the repository
# root).

# start_server EXPORT LOG: starts pohmelfs-server on a free loopback port, waits (bounded) until
# it listens, sets $uri to its address and appends its pid to $pids.
start_server() {
  build/bin/pohmelfs-server --export "$1" --listen tcp://127.0.0.1:0 </dev/null >/dev/null 2>"$2" &
  pids="${pids:-} $!"
  for _ in $(seq 1 100); do grep -q "listening on" "$2" && break; sleep 0.1; done
  uri=$(sed -n 's/.*listening on \(tcp:[^ ]*\).*/\1/p' "$2" | head -1)
  [ -n "$uri" ] || { cat "$2" >&2; return 1; }
}

# bench_fs TARGET DIR JSONL [pohmelfs-bench fs options]: runs the file system benchmark in DIR
# and appends its JSON lines to JSONL, each tagged with "target":TARGET.
bench_fs() {
  local target=$1 dir=$2 out=$3
  shift 3
  build/bin/pohmelfs-bench fs "$dir" --json "$@" | sed "s/^{/{\"target\":\"$target\",/" >>"$out"
}
