#!/usr/bin/env bash
# Webhook intake throughput, side by side with a trivial route of the same server, on
# loopback only, bounded in time. Needs wrk (apt-get install wrk) and a release build.
#   cargo build --release && benches/webhook_intake.sh [seconds] [connections]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
conns=${2:-64}
dir=$(mktemp -d)
port=18099
DATABASE_URL="sqlite://$dir/bench.db" BIND_ADDR="127.0.0.1:$port" PUBLIC_BASE_URL="http://127.0.0.1:$port" \
  WEBHOOK_VERIFY=secret-key WEBHOOK_SECRETS=bench-secret API_TOKENS=bench RUST_LOG=warn \
  ./target/release/aa-recurring > "$dir/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 1 50); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done

echo "== GET /healthz (no database)"
wrk -t2 -c"$conns" -d"${secs}s" --latency "http://127.0.0.1:$port/healthz" | grep -E "Requests/sec|99%"
echo "== POST /webhooks/bankconnect (verify, commit to the inbox with its job, then 200)"
wrk -t2 -c"$conns" -d"${secs}s" --latency -s benches/wrk/webhook.lua "http://127.0.0.1:$port/webhooks/bankconnect" | grep -E "Requests/sec|99%|Non-2xx"
