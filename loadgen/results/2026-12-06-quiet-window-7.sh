#!/bin/bash
# Quiet-window benches, part 3 of the fourth session: push500 against Nchan once per
# transport, market500 unthrottled against max_rate=10 (two rounds, alternated), new build.
set -u
cd "$1"
R=loadgen/results/2026-12-06-quiet-window-7.jsonl
M=loadgen/results/2026-12-06-quiet-window-7-metrics.txt
export SKIP_BUILD=1 RESULTS=$R METRICS_OUT=$M TICKGATE_PORT=28571 NCHAN_PORT=28572 FLOOR_PORT=28579
echo "== push500 $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
for t in sse ws; do
  LABEL_SUFFIX="q5 new r1" scripts/bench --targets tickgate --transports $t push500
  LABEL_SUFFIX="q5 r1" scripts/bench --targets nchan --transports $t push500
done
for round in 1 2; do
  echo "== market500 round $round $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
  for t in ws sse; do
    if [ $round = 1 ]; then cases="market500 market500-throttled"; else cases="market500-throttled market500"; fi
    for c in $cases; do
      LABEL_SUFFIX="q5 new r$round" scripts/bench --targets tickgate --transports $t $c
    done
  done
done
echo "== end $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
