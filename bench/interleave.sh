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
    python3 -c '
import re, sys
name = None
for line in sys.stdin:
    # criterion prints a row name alone on a line, or (when short) followed by its time.
    m = re.match(r"^(\S.*?)\s+time:\s+\[\S+ \S+ (\S+) (\S+)", line)
    if m:
        name = m.group(1)
    else:
        if re.match(r"^[a-z]", line):
            name = line.strip()
            continue
        m = re.match(r"^\s+time:\s+\[\S+ \S+ (\S+) (\S+)", line)
        if not m or name is None:
            continue
        m = re.match(r"^()\s+time:\s+\[\S+ \S+ (\S+) (\S+)", line)
    value, unit = float(m.group(2)), m.group(3)
    value *= {"ps": 1e-3, "ns": 1, "µs": 1e3, "us": 1e3, "ms": 1e6}[unit]
    print(sys.argv[1] + "\t" + name + "\t" + str(value))
    name = None
' "$(basename "$b")" >> "$out"
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
