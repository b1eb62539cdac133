#!/usr/bin/env bash
# The fabric benchmark (issue 5) against minimal baselines, on this host, everything on loopback.
#
# Part 1, the sweep (one run each; tables, $OUT/fabric.csv and the plot $OUT/fabric.png):
# pohmelfs-bench fabric, server and client in one process, on
#   tcp spin=0            the tcp backend, both ends sleep at once (TransportOptions::spin 0)
#   tcp srv-spin=50       the echo server polls up to 50 us (adaptive), as pohmelfs-server does by
#                         default, and the client sleeps at once, as mounts do: what ships
#   ofi+tcp spin=0        libfabric's tcp provider, both progress threads sleep at once
#   ofi+tcp srv-spin=50   the same with the shipped spins
#   ofi+tcp spin=50       both ends poll up to 50 us
# and the baselines
#   iperf3, iperf3 -l 1M  one TCP stream (default 128 KiB writes; 1 MiB writes), for message
#                         bandwidth
#   pingpong              pohmelfs-bench pingpong: blocking socket, TCP_NODELAY, 64 B, for the
#                         64-byte round trip
#   fi_write              fi-write-baseline: a window of 8 fi_write calls on the tcp provider,
#                         both sides sleeping in fi_cq_sread, for the RMA write; fi_write-dc: the
#                         same with FI_DELIVERY_COMPLETE, the completion the backend asks for
#
# Part 2, the targets (reported, never asserted): on this shared two-core VM one run swings by 2x,
# so each target is measured REPEATS times as a back-to-back pair (baseline, then pohmelfs) at
# its size, and judged on the median of the pairs' ratios. Shipped spins (srv-spin=50):
#   tcp msg-bw at 1, 2, 4 MiB >= 0.8 x iperf3 (judged against the faster of its two runs)
#   tcp 64 B round-trip p50 <= 1.5 x pingpong p50, unpinned and with every thread on one CPU
#     (taskset -c PIN_CPU: takes out the VM's cross-CPU wake-ups, about 20 us a hop here)
#   ofi+tcp rma-write at 1 MiB >= 0.8 x fi_write
#
# Writes $OUT/fabric.csv (the sweep's rows), $OUT/fabric.png, $OUT/pairs.csv (part 2's rows,
# with a repeat column), $OUT/results.jsonl (fabric's JSON lines), $OUT/summary.json (ratios,
# targets, load) and each run's own output.
#
# Usage: [BIN=build/bin] [OUT=/tmp/pohmelfs-fabric] [DURATION_MS=500] [REPEATS=5] [PIN_CPU=1] \
#          bench/compare-fabric.sh
# BIN: the directory of pohmelfs-bench and fi-write-baseline; when unset, ci/build builds build/
# first. DURATION_MS: per test and per size (iperf3 runs twice as long: it starts slowly).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${BIN:-}" ]; then
  ci/build >/dev/null
  BIN=build/bin
fi
OUT=${OUT:-/tmp/pohmelfs-fabric}
ms=${DURATION_MS:-500}
repeats=${REPEATS:-5}
pin=${PIN_CPU:-1}
iperf_s=$(((ms * 2 + 999) / 1000))
mkdir -p "$OUT/pairs"
rm -f "$OUT"/*.csv "$OUT"/*.out "$OUT"/*.json "$OUT"/*.jsonl "$OUT"/fabric.png "$OUT"/pairs/*
pids=""
cleanup() { for p in $pids; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
header="label,backend,spin_us,test,bytes,window,iters,seconds,mib_per_s,msgs_per_s,usec_per_xfer,p50_us,p99_us"
load_before=$(cut -d' ' -f1-3 /proc/loadavg)

# fabric CSV LABEL [fabric options]: one pohmelfs-bench fabric run, its rows in CSV.
fabric() {
  local csv=$1 label=$2
  shift 2
  "$BIN/pohmelfs-bench" fabric --json --duration-ms "$ms" --label "$label" --csv "$csv" "$@" \
    >>"$OUT/results.jsonl"
}

# iperf3 CSV LABEL [iperf3 options]: one single-stream run against the server on $port, as one
# row of the fabric CSV format (test "stream", bytes = iperf3's write size).
iperf3_csv() {
  local csv=$1 label=$2
  shift 2
  iperf3 -c 127.0.0.1 -p "$port" -t "$iperf_s" -J "$@" >"$csv.json"
  python3 - "$csv.json" "$csv" "$label" "$header" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
end = r["end"]["sum_received"]
mibps = end["bits_per_second"] / 8 / 2**20
blk = r["start"]["test_start"]["blksize"]
with open(sys.argv[2], "w") as f:
    f.write(sys.argv[4] + "\n")
    f.write(f"{sys.argv[3]},socket,,stream,{blk},1,{end['bytes'] // blk},{end['seconds']:.6f},"
            f"{mibps:.3f},,{blk / (mibps * 2**20) * 1e6:.3f},,\n")
PY
}

have_iperf=
if command -v iperf3 >/dev/null; then
  port=$((20000 + RANDOM % 20000))
  iperf3 -s -B 127.0.0.1 -p "$port" >"$OUT/iperf3-server.out" 2>&1 &
  pids="$pids $!"
  for _ in $(seq 1 50); do ss -Hltn "sport = :$port" | grep -q . && break; sleep 0.1; done
  have_iperf=1
else
  echo "iperf3 not installed (ci/setup installs it): skipping it" >&2
fi

echo "== sweep" >&2
fabric "$OUT/tcp-spin0.csv" "tcp spin=0" --loopback tcp://127.0.0.1:0 --spin-us 0
fabric "$OUT/tcp-srv50.csv" "tcp srv-spin=50" --loopback tcp://127.0.0.1:0 --spin-us 0 \
  --server-spin-us 50
fabric "$OUT/ofi-spin0.csv" "ofi+tcp spin=0" --loopback ofi+tcp://127.0.0.1:0 --spin-us 0
fabric "$OUT/ofi-srv50.csv" "ofi+tcp srv-spin=50" --loopback ofi+tcp://127.0.0.1:0 --spin-us 0 \
  --server-spin-us 50
fabric "$OUT/ofi-spin50.csv" "ofi+tcp spin=50" --loopback ofi+tcp://127.0.0.1:0 --spin-us 50
"$BIN/pohmelfs-bench" pingpong --loopback tcp://127.0.0.1:0 --duration-ms "$ms" \
  --csv "$OUT/pingpong.csv" >"$OUT/pingpong.out"
"$BIN/fi-write-baseline" --comp sread --duration-ms "$ms" --csv "$OUT/fi_write.csv" \
  >"$OUT/fi_write.out"
"$BIN/fi-write-baseline" --comp sread --delivery-complete --duration-ms "$ms" \
  --csv "$OUT/fi_write-dc.csv" >"$OUT/fi_write-dc.out"
if [ -n "$have_iperf" ]; then
  iperf3_csv "$OUT/iperf3.csv" iperf3
  iperf3_csv "$OUT/iperf3-1M.csv" "iperf3 -l 1M" -l 1M
fi

echo "== targets, $repeats pairs" >&2
p=$OUT/pairs
for i in $(seq 1 "$repeats"); do
  if [ -n "$have_iperf" ]; then
    iperf3_csv "$p/iperf3-$i.csv" iperf3
    iperf3_csv "$p/iperf3-1M-$i.csv" "iperf3 -l 1M" -l 1M
  fi
  fabric "$p/tcp-$i.csv" "tcp srv-spin=50" --loopback tcp://127.0.0.1:0 --spin-us 0 \
    --server-spin-us 50 --min-size 1048576 --max-size 4194304
  "$BIN/pohmelfs-bench" pingpong --loopback tcp://127.0.0.1:0 --duration-ms "$ms" \
    --csv "$p/pingpong-$i.csv" >/dev/null
  taskset -c "$pin" "$BIN/pohmelfs-bench" pingpong --loopback tcp://127.0.0.1:0 \
    --duration-ms "$ms" --label "pingpong 1cpu" --csv "$p/pingpong-1cpu-$i.csv" >/dev/null
  taskset -c "$pin" "$BIN/pohmelfs-bench" fabric --loopback tcp://127.0.0.1:0 --spin-us 0 \
    --server-spin-us 50 --duration-ms "$ms" --min-size 4096 --max-size 4096 --no-rma \
    --label "tcp srv-spin=50 1cpu" --csv "$p/tcp-1cpu-$i.csv" >/dev/null
  "$BIN/fi-write-baseline" --comp sread --duration-ms "$ms" --min-size 1048576 \
    --max-size 1048576 --csv "$p/fi_write-$i.csv" >/dev/null
  fabric "$p/ofi-$i.csv" "ofi+tcp srv-spin=50" --loopback ofi+tcp://127.0.0.1:0 --spin-us 0 \
    --server-spin-us 50 --min-size 1048576 --max-size 1048576
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

# One CSV of the sweep (one header), one of the pairs (with their repeat number).
echo "$header" >"$OUT/fabric.csv"
for f in tcp-spin0 tcp-srv50 ofi-spin0 ofi-srv50 ofi-spin50 pingpong iperf3 iperf3-1M fi_write \
  fi_write-dc; do
  [ -f "$OUT/$f.csv" ] && tail -n +2 "$OUT/$f.csv" >>"$OUT/fabric.csv"
done
echo "repeat,$header" >"$OUT/pairs.csv"
for f in "$p"/*.csv; do
  i=${f##*-}
  tail -n +2 "$f" | sed "s/^/${i%.csv},/" >>"$OUT/pairs.csv"
done

# The plot: every latency row; bandwidth of the shipped spins and the baselines only.
python3 - "$OUT/fabric.csv" "$OUT/fabric-plot.csv" <<'PY'
import csv, sys
keep = {("tcp srv-spin=50", "msg-bw"), ("ofi+tcp srv-spin=50", "msg-bw"),
        ("ofi+tcp srv-spin=50", "rma-write"), ("ofi+tcp srv-spin=50", "rma-read"),
        ("fi_write", "rma-write"), ("fi_write-dc", "rma-write"), ("iperf3", "stream"),
        ("iperf3 -l 1M", "stream")}
rows = list(csv.reader(open(sys.argv[1])))
with open(sys.argv[2], "w") as f:
    w = csv.writer(f, lineterminator="\n")
    w.writerow(rows[0])
    for r in rows[1:]:
        if r[3] in ("latency", "msg-rate") or (r[0], r[3]) in keep:
            w.writerow(r)
PY
if ! "$BIN/pohmelfs-bench" plot "$OUT/fabric-plot.csv" "$OUT/fabric.png" \
  --title "pohmelfs-bench fabric, loopback, $(nproc) cores, $(date -u +%F)"; then
  echo "no PNG (see above)" >&2
fi

python3 - "$OUT" "$load_before" "$load_after" <<'PY'
import csv, json, statistics, sys
out = sys.argv[1]
MiB = 1 << 20

def load(path):
    return list(csv.DictReader(open(path)))

def val(rows, label, test, col, size=None):
    for r in rows:
        if r["label"] == label and r["test"] == test and (size is None or int(r["bytes"]) == size):
            return float(r[col]) if r[col] else None
    return None

def f(x, w=8, d=0):
    return f"{x:>{w}.{d}f}" if x is not None else f'{"-":>{w}}'

sweep = load(f"{out}/fabric.csv")
tcps = ["tcp spin=0", "tcp srv-spin=50"]
ofis = ["ofi+tcp spin=0", "ofi+tcp srv-spin=50", "ofi+tcp spin=50"]
print("Sweep (one run each)\n")
print(f'{"64 B round trip":<22}{"p50 us":>8}{"p99 us":>8}{"msgs/s":>9}')
for label in tcps + ofis + ["pingpong"]:
    if val(sweep, label, "latency", "p50_us") is not None:
        print(f"{label:<22}{f(val(sweep, label, 'latency', 'p50_us'), d=1)}"
              f"{f(val(sweep, label, 'latency', 'p99_us'), d=1)}"
              f"{f(val(sweep, label, 'msg-rate', 'msgs_per_s'), 9)}")
sizes = (4 << 10, 64 << 10, 256 << 10, MiB, 2 * MiB, 4 * MiB)
print(f'\n{"MiB/s":<30}' + "".join(f"{s // 1024:>7}K" for s in sizes))
series = [(l, "msg-bw") for l in tcps + ofis]
series += [(l, t) for l in ofis for t in ("rma-write", "rma-read")]
series += [("fi_write", "rma-write"), ("fi_write-dc", "rma-write")]
for label, test in series:
    v = [val(sweep, label, test, "mib_per_s", s) for s in sizes]
    if any(x is not None for x in v):
        print(f"{label + ' ' + test:<30}" + "".join(f(x) for x in v))
for label in ("iperf3", "iperf3 -l 1M"):
    x = val(sweep, label, "stream", "mib_per_s")
    if x:
        print(f"{label + ' stream':<30}{x:>8.0f}")

# Part 2: the pairs, judged on the median of the per-pair ratios.
pairs = load(f"{out}/pairs.csv")
reps = sorted({int(r["repeat"]) for r in pairs})
def per_repeat(fn):
    xs = []
    for i in reps:
        rows = [r for r in pairs if int(r["repeat"]) == i]
        x = fn(rows)
        if x is not None:
            xs.append(x)
    return xs
def ratio(a, b):
    return a / b if a is not None and b else None
def iperf_best(rows):
    xs = [val(rows, l, "stream", "mib_per_s") for l in ("iperf3", "iperf3 -l 1M")]
    xs = [x for x in xs if x]
    return max(xs) if xs else None
checks = {
    "tcp msg-bw 1 MiB / iperf3 (faster of default, -l 1M)": (lambda rows: ratio(
        val(rows, "tcp srv-spin=50", "msg-bw", "mib_per_s", MiB), iperf_best(rows)), ">=", 0.8),
    "tcp msg-bw 2 MiB / iperf3": (lambda rows: ratio(
        val(rows, "tcp srv-spin=50", "msg-bw", "mib_per_s", 2 * MiB), iperf_best(rows)), ">=", 0.8),
    "tcp msg-bw 4 MiB / iperf3": (lambda rows: ratio(
        val(rows, "tcp srv-spin=50", "msg-bw", "mib_per_s", 4 * MiB), iperf_best(rows)), ">=", 0.8),
    "tcp msg-bw 1 MiB / iperf3 default (128 KiB writes)": (lambda rows: ratio(
        val(rows, "tcp srv-spin=50", "msg-bw", "mib_per_s", MiB),
        val(rows, "iperf3", "stream", "mib_per_s")), None, None),
    "tcp p50 / pingpong p50": (lambda rows: ratio(
        val(rows, "tcp srv-spin=50", "latency", "p50_us"),
        val(rows, "pingpong", "latency", "p50_us")), "<=", 1.5),
    "tcp p50 / pingpong p50, one CPU": (lambda rows: ratio(
        val(rows, "tcp srv-spin=50 1cpu", "latency", "p50_us"),
        val(rows, "pingpong 1cpu", "latency", "p50_us")), "<=", 1.5),
    "ofi+tcp p50 / pingpong p50 (no target)": (lambda rows: ratio(
        val(rows, "ofi+tcp srv-spin=50", "latency", "p50_us"),
        val(rows, "pingpong", "latency", "p50_us")), None, None),
    "ofi+tcp rma-write 1 MiB / fi_write": (lambda rows: ratio(
        val(rows, "ofi+tcp srv-spin=50", "rma-write", "mib_per_s", MiB),
        val(rows, "fi_write", "rma-write", "mib_per_s", MiB)), ">=", 0.8),
}
summary = {"load_before": sys.argv[2], "load_after": sys.argv[3], "repeats": len(reps),
           "targets": {}}
print(f"\nTargets: {len(reps)} back-to-back pairs each, shipped spins (client 0, server 50 us)\n")
print(f'{"ratio":<54}{"median":>7}   {"per pair":<34} target')
for name, (fn, op, bound) in checks.items():
    xs = per_repeat(fn)
    med = statistics.median(xs) if xs else None
    met = None
    if med is not None and op:
        met = med >= bound if op == ">=" else med <= bound
    verdict = "-" if not op else f"{op} {bound}: " + {True: "met", False: "NOT met",
                                                       None: "not measured"}[met]
    print(f"{name:<54}{f(med, 7, 2)}   {' '.join(f'{x:.2f}' for x in xs):<34} {verdict}")
    summary["targets"][name] = {"median": med, "pairs": xs, "bound": bound, "op": op, "met": met}
for label, col in (("pingpong", "p50_us"), ("pingpong 1cpu", "p50_us"),
                   ("tcp srv-spin=50", "p50_us"), ("tcp srv-spin=50 1cpu", "p50_us"),
                   ("ofi+tcp srv-spin=50", "p50_us")):
    xs = per_repeat(lambda rows: val(rows, label, "latency", col))
    if xs:
        print(f"  {label} p50 us, per pair: {' '.join(f'{x:.1f}' for x in xs)}")
for label, test, size in (("iperf3", "stream", None), ("iperf3 -l 1M", "stream", None),
                          ("tcp srv-spin=50", "msg-bw", MiB), ("fi_write", "rma-write", MiB),
                          ("ofi+tcp srv-spin=50", "rma-write", MiB)):
    xs = per_repeat(lambda rows: val(rows, label, test, "mib_per_s", size))
    if xs:
        print(f"  {label} {test} MiB/s, per pair: {' '.join(f'{x:.0f}' for x in xs)}")
print(f"\nload average before {sys.argv[2]}, after {sys.argv[3]}")
json.dump(summary, open(f"{out}/summary.json", "w"), indent=1)
PY
echo "results in $OUT: fabric.csv, fabric.png, pairs.csv, results.jsonl, summary.json"
