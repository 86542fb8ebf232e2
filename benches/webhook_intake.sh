#!/usr/bin/env bash
# Webhook intake throughput, side by side with a trivial route of the same server, on
# loopback only, bounded in time. Needs wrk (apt-get install wrk) and a release build.
#   cargo build --release && benches/webhook_intake.sh [seconds] [connections]
#   BIN=/tmp/other-build benches/webhook_intake.sh    # another build, for a side-by-side pair
# Besides wrk's figures it prints the service's CPU a webhook (from /proc/PID/stat), its peak
# RSS, how idle the machine was, and the service's count of deliveries accepted (stored),
# duplicate and rejected, which shows that every request was a new delivery.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
conns=${2:-64}
bin=${BIN:-./target/release/aa-recurring}
dir=$(mktemp -d)
port=18099
DATABASE_URL="sqlite://$dir/bench.db" BIND_ADDR="127.0.0.1:$port" PUBLIC_BASE_URL="http://127.0.0.1:$port" \
  WEBHOOK_VERIFY=secret-key WEBHOOK_SECRETS=bench-secret API_TOKENS=bench RUST_LOG=warn \
  "$bin" > "$dir/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 1 50); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done

echo "== GET /healthz (no database)"
wrk -t2 -c"$conns" -d"${secs}s" --latency "http://127.0.0.1:$port/healthz" | grep -E "Requests/sec|99%"
echo "== POST /webhooks/bankconnect (verify, commit to the inbox with its job, then 200)"
# Busy and idle (with I/O wait) jiffies of the machine, and the service's user+system jiffies.
machine() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $5+$6}' /proc/stat; }
service() { awk '{print $14+$15}' "/proc/$server/stat"; }
read -r busy0 idle0 < <(machine)
cpu0=$(service)
wrk -t2 -c"$conns" -d"${secs}s" --latency -s benches/wrk/webhook.lua \
  "http://127.0.0.1:$port/webhooks/bankconnect" > "$dir/wrk.out"
read -r busy1 idle1 < <(machine)
cpu1=$(service)
grep -E "Requests/sec|99%|Non-2xx" "$dir/wrk.out"
requests=$(awk '/requests in/{print $1}' "$dir/wrk.out")
hz=$(getconf CLK_TCK)
awk -v c=$((cpu1 - cpu0)) -v n="$requests" -v hz="$hz" -v s="$secs" \
  -v b=$((busy1 - busy0)) -v i=$((idle1 - idle0)) \
  -v rss="$(awk '/VmHWM/{print $2}' "/proc/$server/status")" \
  'BEGIN { printf "service CPU %.1f us a webhook (%.2f cores); peak RSS %.1f MiB; machine idle %.0f%%\n",
           c / hz * 1e6 / n, c / hz / s, rss / 1024, 100 * i / (b + i) }'
# Every request must be a new delivery: a duplicate is acknowledged without being stored, so
# duplicates would flatter the rate.
curl -sf "http://127.0.0.1:$port/metrics" |
  awk '/^aa_recurring_webhooks_total\{/ { split($1, l, "\""); n[l[2]] = $2 }
       END { printf "deliveries: %d accepted, %d duplicate, %d rejected\n", n["accepted"], n["duplicate"], n["rejected"] }'
