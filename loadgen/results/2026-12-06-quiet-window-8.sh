#!/bin/bash
# Quiet-window benches, part 4 of the fourth session: push200 rounds 2 and 3 against Nchan
# (round 1 is in quiet-window-5), new build.
set -u
cd "$1"
R=loadgen/results/2026-12-06-quiet-window-8.jsonl
M=loadgen/results/2026-12-06-quiet-window-8-metrics.txt
export SKIP_BUILD=1 RESULTS=$R METRICS_OUT=$M TICKGATE_PORT=28571 NCHAN_PORT=28572 FLOOR_PORT=28579
for round in 2 3; do
  echo "== push200 round $round $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
  for t in sse ws; do
    if [ $round = 2 ]; then targets="nchan tickgate"; else targets="tickgate nchan"; fi
    for target in $targets; do
      if [ $target = tickgate ]; then sfx="q5 new r$round"; else sfx="q5 r$round"; fi
      LABEL_SUFFIX="$sfx" scripts/bench --targets $target --transports $t push200
    done
  done
done
echo "== end $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
