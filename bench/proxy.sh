#!/usr/bin/env bash
# Load comparison (not in CI): wrk against the same upstream through stormwall's sidecar,
# nginx and haproxy, one worker each, in one run: ROUNDS rounds, each running every proxy in
# turn (interleaved, so a noisy moment hits all), wrk -t1 -c32 by default. Prints req/s,
# latency percentiles and each proxy's CPU (user + system, from /proc) per request.
# Installs nginx, haproxy and wrk with apt-get when missing. Loopback only.
#
# MODE=callgrind counts instead, for haproxy, the hyper floor and stormwall (and STORMWALL_BASE): the
# user-space instructions each executes per proxied request under valgrind's callgrind,
# counted over REQUESTS keep-alive requests on CONNECTIONS connections after a warm-up (a
# small client here). The count does not depend on what else the machine runs, so it can
# be taken on a busy machine (no wall-clock figure is). Needs valgrind.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-1}
ROUNDS=${ROUNDS:-3}   # each round runs every proxy once, in turn (interleaved)
MODE=${MODE:-load}    # load (wrk) or callgrind (instructions per request)
REQUESTS=${REQUESTS:-5000}
# STORMWALL_BASE=path/to/another/stormwall adds a row: that build with the same config
# (to compare two commits in one interleaved run).
STORMWALL_BASE=${STORMWALL_BASE:-}
need() { command -v "$1" >/dev/null 2>&1; }
if ! need nginx || ! need haproxy || ! need wrk; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq nginx haproxy wrk >/dev/null
fi
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release}
if [ "${BUILD:-1}" = 1 ]; then   # BUILD=0: the binaries in $BIN as they are
  cargo build --release -q -p stormwall-cli
  cargo build --release -q -p stormwall-proxy --example hyper_floor
fi
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
UP=18601 NGINX=18602 HAPROXY=18603 STORMWALL=18604 ADMIN=18605 FLOOR=18606 BASE=18607 BASE_ADMIN=18608

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
STORMWALL_WORKER_THREADS=1 RUST_LOG=warn "$BIN/stormwall" proxy --config "$work/stormwall.toml" &
PID_STORMWALL=$!
# The floor: hyper's server and pooled client with the sidecar's settings, nothing else.
"$BIN/examples/hyper_floor" "127.0.0.1:$FLOOR" "127.0.0.1:$UP" &
PID_FLOOR=$!
PROXIES=("nginx (1 worker):$NGINX:$PID_NGINX" "haproxy (1 thread):$HAPROXY:$PID_HAPROXY" "hyper floor (1 thread):$FLOOR:$PID_FLOOR" "stormwall (1 thread):$STORMWALL:$PID_STORMWALL")
if [ -n "$STORMWALL_BASE" ]; then
  sed -e "s/:$STORMWALL\"/:$BASE\"/" -e "s/:$ADMIN\"/:$BASE_ADMIN\"/" "$work/stormwall.toml" >"$work/base.toml"
  STORMWALL_WORKER_THREADS=1 RUST_LOG=warn "$STORMWALL_BASE" proxy --config "$work/base.toml" &
  PROXIES+=("stormwall base (1 thread):$BASE:$!")
fi
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

if [ "$MODE" = callgrind ]; then
  # REQUESTS keep-alive GETs over CONNECTIONS connections, each sent when the previous
  # answer is whole.
  fixed_load() {
    python3 - "$1" "$2" "$3" <<'PY'
import asyncio, sys
port, total, conns = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
left = [total]
async def one():
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    while left[0] > 0:
        left[0] -= 1
        writer.write(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        length = next(int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:"))
        await reader.readexactly(length)
    writer.close()
async def main():
    await asyncio.gather(*(one() for _ in range(conns)))
asyncio.run(main())
PY
  }
  kill "$PID_STORMWALL" "$PID_FLOOR"
  [ -n "$STORMWALL_BASE" ] && kill "${PROXIES[4]##*:}"
  sleep 0.5
  # haproxy too, on its own port (the one started above keeps running, uncounted).
  HAPROXY_CG=18609
  sed "s/127.0.0.1:$HAPROXY\$/127.0.0.1:$HAPROXY_CG/" "$work/haproxy.cfg" >"$work/haproxy-cg.cfg"
  runs=("haproxy:$HAPROXY_CG:haproxy -f $work/haproxy-cg.cfg"
        "hyper floor:$FLOOR:$BIN/examples/hyper_floor 127.0.0.1:$FLOOR 127.0.0.1:$UP"
        "stormwall:$STORMWALL:$BIN/stormwall proxy --config $work/stormwall.toml")
  [ -n "$STORMWALL_BASE" ] && runs+=("stormwall base:$BASE:$STORMWALL_BASE proxy --config $work/base.toml")
  printf "%-5s %-16s %10s %16s %12s\n" "round" "through" "requests" "instructions" "per request"
  for round in $(seq "$ROUNDS"); do
    for entry in "${runs[@]}"; do
      IFS=: read -r name port cmd <<<"$entry"
      # shellcheck disable=SC2086
      STORMWALL_WORKER_THREADS=1 RUST_LOG=warn valgrind --tool=callgrind --dump-instr=no \
        --callgrind-out-file="$work/cg.%p" $cmd >"$work/valgrind.log" 2>&1 &
      vg=$!
      until curl -s -o /dev/null "http://127.0.0.1:$port/"; do sleep 0.5; done
      fixed_load "$port" 1000 "$CONNECTIONS"      # warm up (pools, caches)
      callgrind_control -z "$vg" >/dev/null 2>&1      # count from here...
      fixed_load "$port" "$REQUESTS" "$CONNECTIONS"
      callgrind_control -d "$vg" >/dev/null 2>&1      # ...to here (dumped as cg.PID.1)
      kill "$vg"; wait "$vg" 2>/dev/null || true
      count=$(awk '/^summary:/ {print $2}' "$work/cg.$vg.1")
      printf "%-5s %-16s %10s %16s %12s\n" "$round" "$name" "$REQUESTS" "$count" \
        "$(awk -v c="$count" -v n="$REQUESTS" 'BEGIN { printf "%.0f", c / n }')"
    done
  done
  exit 0
fi

printf "%-5s %-22s %10s %9s %9s %9s %12s\n" "round" "through" "req/s" "p50" "p90" "p99" "CPU µs/req"
for round in $(seq "$ROUNDS"); do
  for entry in "direct:$UP:" "${PROXIES[@]}"; do
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
