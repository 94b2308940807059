"""The summary line of paired.sh and pair-servers.sh: the median of the pairs' ratios,
their spread, and how many pairs were above a mark (the target, or 1 for "B won").

    python3 ratios.py LABEL MARK RATIO...
"""
import statistics
import sys

label, mark = sys.argv[1], float(sys.argv[2])
r = sorted(float(x) for x in sys.argv[3:])
if not r:
    sys.exit(f"{label}: no pairs")
above = sum(x > mark for x in r)
print(f"median {label} {statistics.median(r):.3f} (min {r[0]:.3f}, max {r[-1]:.3f}, "
      f"{len(r)} pairs, {above} above {mark:g})")
