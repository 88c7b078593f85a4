#!/usr/bin/env bash
# Rill, Flink SQL and DataFusion (batch) on the same generated bids, in one sitting.
#
#   bench/peers.sh [EVENTS]        (default 5,000,000 bids, plus one auction per 20 bids)
#
# Generates the data with ../shared/peers/gen_events.py (cached in $BENCH_DATA), builds Rill in
# release, then for each workload W1-W4 runs `rill bench file` on queries/bench/wN.sql, Flink
# 2.3 through ../shared/peers/run_flink.sh (parallelism 1; its figure is the job's net runtime,
# without JVM start) and DataFusion batch through run_datafusion_batch.sh (1 partition). Rill's
# figure covers everything from reading the file to the last output committed.
# Prints a table with the ratios, then one JSON object per workload per line.
#
# Correctness (`rill_matches_reference`): W1 and W4 must have exactly DataFusion's rows; W2 must
# equal the ideal-watermark result (run_datafusion_batch.py --simulate-watermark): its rows, its
# count sum, and the late events in Rill's late-data topic; W3 must equal the same ideal-watermark
# replay for hopping windows (computed here, in Python, from the same file).
# Env: BENCH_DATA (default /tmp/bench-peers-data), CARGO_TARGET_DIR, SKIP_FLINK=1.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
peers="$root/../shared/peers"
n="${1:-5000000}"
data="${BENCH_DATA:-/tmp/bench-peers-data}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/rill-target}"
mkdir -p "$data"
bids="$data/bids_$n.json"
auctions="$data/auctions_$n.json"
if [[ ! -f "$bids" || ! -f "$auctions" ]]; then
  python3 "$peers/gen_events.py" --n "$n" --out "$bids" --auctions-out "$auctions" >&2
fi
(cd "$root" && cargo build --release -q -p rill-server)
rill="$CARGO_TARGET_DIR/release/rill"
out="$(mktemp -d)"
for w in w1 w2 w3 w4; do
  echo "== $w: rill" >&2
  rextra=()
  [[ $w == w4 ]] && rextra=(--auctions "$auctions")
  RUST_LOG=warn "$rill" bench file --query "$root/queries/bench/$w.sql" --input "$bids" "${rextra[@]}" --json \
    | tail -1 > "$out/rill_$w.json"
  echo "== $w: datafusion" >&2
  extra=()
  [[ $w == w2 ]] && extra=(--simulate-watermark)
  "$peers/run_datafusion_batch.sh" -w "$w" --bids "$bids" --auctions "$auctions" -p 1 "${extra[@]}" \
    | tail -1 > "$out/datafusion_$w.json"
  if [[ "${SKIP_FLINK:-0}" != 1 ]]; then
    echo "== $w: flink" >&2
    fextra=()
    [[ $w == w4 ]] && fextra=(--auctions "$auctions")
    "$peers/run_flink.sh" "$w" "$bids" 1 "${fextra[@]}" 2>/dev/null | tail -1 > "$out/flink_$w.json"
  fi
done
python3 - "$out" "$bids" <<'PY'
import json, os, sys, datetime
out, bids = sys.argv[1], sys.argv[2]
def load(name):
    p = os.path.join(out, name)
    try:
        with open(p) as f:
            return json.loads(f.read().strip() or "null")
    except (OSError, ValueError):
        return None

def w3_ideal(path):
    """Ideal-watermark W3: an event counts in each of its 5 hopping windows (10 s, every 2 s)
    whose end - 1 ms is still after the watermark (max event time seen before it - 5 s)."""
    epoch = datetime.datetime(1970, 1, 1)
    cache = {}
    mx = None
    rows, total = set(), 0
    with open(path) as f:
        for line in f:
            e = json.loads(line)
            s = e["date_time"]
            sec = cache.get(s[:19])
            if sec is None:
                sec = int((datetime.datetime.strptime(s[:19], "%Y-%m-%d %H:%M:%S") - epoch).total_seconds()) * 1000
                cache[s[:19]] = sec
            t = sec + int(s[20:23])
            wm = None if mx is None else mx - 5000
            last = t - t % 2000
            for k in range(5):
                start = last - k * 2000
                if start <= t - 10000:
                    continue
                if wm is not None and start + 10000 - 1 <= wm:
                    continue
                rows.add((e["auction"], start))
                total += 1
            mx = t if mx is None else max(mx, t)
    return len(rows), total

table = []
lines = []
for w in ["w1", "w2", "w3", "w4"]:
    r, d, fl = load(f"rill_{w}.json"), load(f"datafusion_{w}.json"), load(f"flink_{w}.json")
    if r is None:
        continue
    if w in ("w1", "w4"):
        ok = d is not None and r["out_rows"] == d["out_rows"]
    elif w == "w2":
        ok = d is not None and (r["out_rows"], r["sum_cnt"], r["late_rows"]) == (
            d["sim_stream_rows"], d["sim_stream_sum_cnt"], d["sim_late_dropped"])
    else:
        rows, total = w3_ideal(bids)
        ok = (r["out_rows"], r["sum_cnt"]) == (rows, total)
    flink_eps = fl.get("eps_job") if fl else None
    df_eps = d.get("eps") if d else None
    rec = {
        "workload": w,
        "events": r["events"],
        "rill_events_per_s": round(r["events_per_s"]),
        "flink_events_per_s": flink_eps,
        "datafusion_events_per_s": df_eps,
        "rill_vs_flink": round(r["events_per_s"] / flink_eps, 2) if flink_eps else None,
        "rill_vs_datafusion": round(r["events_per_s"] / df_eps, 2) if df_eps else None,
        "rill_matches_reference": ok,
        "rill_out_rows": r["out_rows"],
        "rill_late_rows": r["late_rows"],
        "rill_cores_used": round(r["cores_used"], 2),
        "rill_peak_rss_mb": round(r["peak_rss_mb"]),
    }
    lines.append(json.dumps(rec))
    table.append(rec)
print("| workload | events | Rill ev/s | Flink ev/s (job) | DataFusion ev/s (batch) | Rill/Flink | Rill/DataFusion | matches |")
print("|---|---:|---:|---:|---:|---:|---:|---|")
fmt = lambda v: f"{v:,}" if isinstance(v, int) else ("—" if v is None else str(v))
for t in table:
    print(f"| {t['workload']} | {t['events']:,} | {fmt(t['rill_events_per_s'])} | {fmt(t['flink_events_per_s'])} | "
          f"{fmt(t['datafusion_events_per_s'])} | {fmt(t['rill_vs_flink'])} | {fmt(t['rill_vs_datafusion'])} | "
          f"{t['rill_matches_reference']} |")
for l in lines:
    print(l)
PY
