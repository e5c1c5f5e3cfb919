#!/usr/bin/env bash
# Load comparison (not in CI): wrk against the same upstream through stormwall's sidecar,
# nginx and haproxy, one worker each, in one run: ROUNDS rounds, each running every proxy in
# turn (interleaved, so a noisy moment hits all), wrk -t1 -c32 by default. Prints req/s,
# latency percentiles and each proxy's CPU (user + system, from /proc) per request.
# Installs nginx, haproxy and wrk with apt-get when missing. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-1}
ROUNDS=${ROUNDS:-3}   # each round runs every proxy once, in turn (interleaved)
need() { command -v "$1" >/dev/null 2>&1; }
if ! need nginx || ! need haproxy || ! need wrk; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq nginx haproxy wrk >/dev/null
fi
cargo build --release -q -p stormwall-cli
cargo build --release -q -p stormwall-proxy --example hyper_floor
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
UP=18601 NGINX=18602 HAPROXY=18603 STORMWALL=18604 ADMIN=18605 FLOOR=18606

# The upstream: nginx answering a fixed 2-byte body (2 workers, so it is not the bottleneck).
cat > "$work/upstream.conf" <<CONF
worker_processes 2; daemon off; pid $work/up.pid; error_log $work/up.err;
events { worker_connections 4096; }
http { access_log off; server { listen 127.0.0.1:$UP; location / { return 200 "ok"; } } }
CONF
nginx -c "$work/upstream.conf" -p "$work" &

cat > "$work/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $work/nx.pid; error_log $work/nx.err;
events { worker_connections 4096; }
http { access_log off;
  upstream up { server 127.0.0.1:$UP; keepalive 64; }
  server { listen 127.0.0.1:$NGINX;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF
nginx -c "$work/nginx.conf" -p "$work" &
PID_NGINX=$!

cat > "$work/haproxy.cfg" <<CONF
global
  nbthread 1
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
frontend f
  bind 127.0.0.1:$HAPROXY
  default_backend b
backend b
  http-reuse always
  server s1 127.0.0.1:$UP
CONF
haproxy -f "$work/haproxy.cfg" &
PID_HAPROXY=$!

cat > "$work/stormwall.toml" <<CONF
[server]
listen = "127.0.0.1:$STORMWALL"
admin = "127.0.0.1:$ADMIN"
[[route]]
name = "bench"
upstream = "http://127.0.0.1:$UP"
timeout = { total = "30s", attempt = "10s" }
retry = { max_retries = 3 }
circuit_breaker = { failure_ratio = 0.5, minimum_throughput = 100, sampling_duration = "10s" }
CONF
STORMWALL_WORKER_THREADS=1 RUST_LOG=warn "${CARGO_TARGET_DIR:-target}/release/stormwall" proxy --config "$work/stormwall.toml" &
PID_STORMWALL=$!
# The floor: hyper's server and pooled client with the sidecar's settings, nothing else.
"${CARGO_TARGET_DIR:-target}/release/examples/hyper_floor" "127.0.0.1:$FLOOR" "127.0.0.1:$UP" &
PID_FLOOR=$!
sleep 1
TICK=$(getconf CLK_TCK)
# CPU time (user + system, in clock ticks) of a process and its children (nginx's workers).
cpu_ticks() {
  local total=0 pid
  for pid in "$1" $(pgrep -P "$1" || true); do
    # Fields 14 and 15 of /proc/PID/stat, counted after the command name's closing paren.
    total=$((total + $(sed 's/.*) //' "/proc/$pid/stat" | awk '{print $12 + $13}')))
  done
  echo "$total"
}

printf "%-5s %-22s %10s %9s %9s %9s %12s\n" "round" "through" "req/s" "p50" "p90" "p99" "CPU µs/req"
for round in $(seq "$ROUNDS"); do
  for entry in "direct:$UP:" "nginx (1 worker):$NGINX:$PID_NGINX" "haproxy (1 thread):$HAPROXY:$PID_HAPROXY" "hyper floor (1 thread):$FLOOR:$PID_FLOOR" "stormwall (1 thread):$STORMWALL:$PID_STORMWALL"; do
    IFS=: read -r name port pid <<<"$entry"
    wrk -t1 -c1 -d1s "http://127.0.0.1:$port/" >/dev/null 2>&1 || true   # warm up
    before=$([ -n "$pid" ] && cpu_ticks "$pid" || echo 0)
    out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "http://127.0.0.1:$port/")
    after=$([ -n "$pid" ] && cpu_ticks "$pid" || echo 0)
    requests=$(echo "$out" | awk '/requests in/ {print $1}')
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    p50=$(echo "$out" | awk '$1=="50%" {print $2}')
    p90=$(echo "$out" | awk '$1=="90%" {print $2}')
    p99=$(echo "$out" | awk '$1=="99%" {print $2}')
    # The proxy's own CPU per request (the upstream's and wrk's not counted).
    cpu=$([ -n "$pid" ] && awk -v t=$((after - before)) -v hz="$TICK" -v n="$requests" 'BEGIN { printf "%.2f", t / hz * 1e6 / n }' || echo "-")
    printf "%-5s %-22s %10s %9s %9s %9s %12s\n" "$round" "$name" "$rps" "$p50" "$p90" "$p99" "$cpu"
  done
done
