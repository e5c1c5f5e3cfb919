#!/usr/bin/env bash
# Instructions per call of the core's hot paths, counted by valgrind's callgrind (not in CI):
#   bash bench/icount.sh [CASE...]      (default: every case; needs valgrind)
# Each case runs 200,000 and 1,200,000 times; the difference of the main thread's counts,
# divided by 1,000,000, is the per-call figure (start-up, including quanta's calibration,
# cancels out; what is left moves a row by up to ≈ 5 instructions between runs).
# Independent of machine load, unlike the criterion rows it mirrors
# (crates/stormwall/benches/strategies.rs); the harness's own loop is included (the `bare`
# case: the operation alone).
set -euo pipefail
cd "$(dirname "$0")/icount"
command -v valgrind >/dev/null || { echo "bench/icount.sh: needs valgrind (apt-get install valgrind)" >&2; exit 1; }
cargo build --release -q
bin=${CARGO_TARGET_DIR:-target}/release/stormwall-icount
cases=("$@")
[ ${#cases[@]} -gt 0 ] || cases=(bare empty time-window count-window consecutive open recloser recloser-open composite composite-ignoring-listener composite-metrics-listener)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
count() { # count CASE N: the main thread's instructions
  rm -f "$work"/cg.*
  valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file="$work/cg.%p" "$bin" "$1" "$2" >/dev/null 2>&1
  awk '/^(summary|totals):/ {print $2; exit}' "$(ls "$work"/cg.*-01)"
}
printf "%-30s %12s\n" "case" "instr/call"
for c in "${cases[@]}"; do
  a=$(count "$c" 200000); b=$(count "$c" 1200000)
  printf "%-30s %12d\n" "$c" $(((b - a) / 1000000))
done
