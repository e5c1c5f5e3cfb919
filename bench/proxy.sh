#!/usr/bin/env bash
# Load comparison (not in CI): wrk against the same upstream through stormwall's sidecar,
# nginx and haproxy, one worker each, in one run. Prints req/s and latency percentiles.
# Installs nginx, haproxy and wrk with apt-get when missing. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-50}
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
# The floor: hyper's server and pooled client with the sidecar's settings, nothing else.
"${CARGO_TARGET_DIR:-target}/release/examples/hyper_floor" "127.0.0.1:$FLOOR" "127.0.0.1:$UP" &
sleep 1

printf "%-22s %10s %9s %9s %9s\n" "through" "req/s" "p50" "p90" "p99"
for entry in "direct:$UP" "nginx (1 worker):$NGINX" "haproxy (1 thread):$HAPROXY" "hyper floor (1 thread):$FLOOR" "stormwall (1 thread):$STORMWALL"; do
  name=${entry%:*}; port=${entry##*:}
  wrk -t2 -c1 -d1s "http://127.0.0.1:$port/" >/dev/null 2>&1 || true   # warm up
  out=$(wrk -t2 -c"$CONNECTIONS" -d"$DURATION" --latency "http://127.0.0.1:$port/")
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p50=$(echo "$out" | awk '$1=="50%" {print $2}')
  p90=$(echo "$out" | awk '$1=="90%" {print $2}')
  p99=$(echo "$out" | awk '$1=="99%" {print $2}')
  printf "%-22s %10s %9s %9s %9s\n" "$name" "$rps" "$p50" "$p90" "$p99"
done
