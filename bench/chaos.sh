#!/usr/bin/env bash
# Relay throughput of `stormwall chaos` with no toxics, against the same traffic direct,
# interleaved round by round in one run (not in CI). Loopback only.
#
#   bulk stream:           iperf3, one TCP stream, DURATION per run (Gbit/s)
#   keep-alive req/resp:   wrk -c CONNECTIONS against nginx answering a 2-byte body (req/s)
#
# Prints every round and the median of the per-round ratios (proxied / direct). The goals
# (issue 21): bulk >= 0.9 of direct, keep-alive request/response >= 0.8 of direct.
# The same traffic also goes through haproxy in TCP mode (one thread, splice on): a
# reference relay written for speed, interleaved in the same rounds.
# Installs iperf3, wrk, nginx and haproxy with apt-get when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-3}
ROUNDS=${ROUNDS:-5}
CONNECTIONS=${CONNECTIONS:-64}
need() { command -v "$1" >/dev/null 2>&1; }
if ! need iperf3 || ! need wrk || ! need nginx || ! need haproxy; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq iperf3 wrk nginx haproxy >/dev/null
fi
# The chaos proxy as `stormwall chaos` serves it (same ChaosServer, multi-thread runtime),
# built alone rather than with the whole CLI.
cargo build --release -q -p stormwall-chaos --example serve
SERVE="${CARGO_TARGET_DIR:-target}/release/examples/serve"
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
IPERF=18701 HTTP=18702 API=18703 IPERF_PROXY=18704 HTTP_PROXY=18705 IPERF_HA=18706 HTTP_HA=18707

iperf3 -s -p $IPERF >/dev/null 2>&1 &
cat > "$work/upstream.conf" <<CONF
worker_processes 1; daemon off; pid $work/up.pid; error_log $work/up.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$HTTP; location / { return 200 "ok"; } } }
CONF
nginx -c "$work/upstream.conf" -p "$work" &
"$SERVE" 127.0.0.1:$API &
cat > "$work/haproxy.cfg" <<CONF
global
  nbthread 1
  maxconn 4000
defaults
  mode tcp
  option splice-auto
  timeout connect 5s
  timeout client 60s
  timeout server 60s
listen bulk
  bind 127.0.0.1:$IPERF_HA
  server s 127.0.0.1:$IPERF
listen http
  bind 127.0.0.1:$HTTP_HA
  server s 127.0.0.1:$HTTP
CONF
haproxy -f "$work/haproxy.cfg" &
for _ in $(seq 100); do curl -sf 127.0.0.1:$API/version >/dev/null && break; sleep 0.1; done
curl -sf -XPOST 127.0.0.1:$API/populate -d "[
  {\"name\": \"bulk\", \"listen\": \"127.0.0.1:$IPERF_PROXY\", \"upstream\": \"127.0.0.1:$IPERF\"},
  {\"name\": \"http\", \"listen\": \"127.0.0.1:$HTTP_PROXY\", \"upstream\": \"127.0.0.1:$HTTP\"}]" >/dev/null
sleep 0.5

bulk() { # PORT: Gbit/s received
  iperf3 -c 127.0.0.1 -p "$1" -t "$DURATION" -J |
    python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"] / 1e9))'
}
reqs() { # PORT: requests/s
  wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" "http://127.0.0.1:$1/" | awk '/Requests\/sec/ {print $2}'
}
wrk -t1 -c4 -d1s "http://127.0.0.1:$HTTP_PROXY/" >/dev/null # warm up

echo "stormwall chaos, no toxics; $(nproc) cores; $ROUNDS rounds of ${DURATION}s, direct, proxied and haproxy interleaved"
printf "%-6s %12s %12s %12s %7s %7s %12s %12s %12s %7s %7s\n" round "bulk direct" "bulk chaos" "bulk haproxy" ratio "ha" "req direct" "req chaos" "req haproxy" ratio "ha"
ratio() { python3 -c "print('%.3f' % ($1 / $2))"; }
bulk_ratios=() req_ratios=() bulk_ha=() req_ha=()
for r in $(seq "$ROUNDS"); do
  bd=$(bulk $IPERF); bp=$(bulk $IPERF_PROXY); bh=$(bulk $IPERF_HA)
  rd=$(reqs $HTTP); rp=$(reqs $HTTP_PROXY); rh=$(reqs $HTTP_HA)
  br=$(ratio "$bp" "$bd"); bhr=$(ratio "$bh" "$bd"); rr=$(ratio "$rp" "$rd"); rhr=$(ratio "$rh" "$rd")
  bulk_ratios+=("$br"); req_ratios+=("$rr"); bulk_ha+=("$bhr"); req_ha+=("$rhr")
  printf "%-6s %7s Gb/s %7s Gb/s %7s Gb/s %7s %7s %12s %12s %12s %7s %7s\n" "$r" "$bd" "$bp" "$bh" "$br" "$bhr" "$rd" "$rp" "$rh" "$rr" "$rhr"
done
median() { printf "%s\n" "$@" | sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
echo "median ratio to direct: bulk $(median "${bulk_ratios[@]}") (goal 0.9; haproxy $(median "${bulk_ha[@]}")), keep-alive req/resp $(median "${req_ratios[@]}") (goal 0.8; haproxy $(median "${req_ha[@]}"))"
