#!/usr/bin/env bash
# Interleaved before/after runs of criterion bench binaries (not in CI):
#   bench/interleave.sh ROUNDS FILTER BINARY...
# runs each binary ROUNDS times in turn (1 s measurement per row) and prints, per binary and
# row, the minimum and the median of the point estimates: a noisy machine moves single runs
# by ±20 %, so compare two builds this way (copy each build's bench binary aside first).
rounds=$1; filter=$2; shift 2
out=$(mktemp)
for r in $(seq "$rounds"); do for b in "$@"; do
  "$b" --bench "$filter" --warm-up-time 0.5 --measurement-time 1 --noplot 2>/dev/null |
    grep -E '^[a-z]|time:' | paste - - | sed 's/ \+/ /g' |
    awk -v b="$(basename "$b")" -F'\t' '{split($2,a," "); print b "\t" $1 "\t" a[4]}' >> "$out"
done; done
python3 - "$out" <<'PY'
import sys, statistics, collections
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    b, name, v = line.rstrip("\n").split("\t")
    rows[(name.strip(), b)].append(float(v))
for (name, b), vs in sorted(rows.items()):
    print(f"{name[:70]:70s} {b:10s} min {min(vs):7.1f}  median {statistics.median(vs):7.1f}  n={len(vs)}")
PY
rm -f "$out"
