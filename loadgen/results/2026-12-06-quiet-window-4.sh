#!/bin/bash
# Quiet-window benches, part 2: fanout1k with the window on/off against Nchan (three more
# rounds), push500 once per transport, and the paced cluster with Redis and PostgreSQL on CPU 1.
set -u
cd "$1"
R=loadgen/results/2026-12-06-quiet-window-4.jsonl
export SKIP_BUILD=1 RESULTS=$R TICKGATE_PORT=28571 NCHAN_PORT=28572 FLOOR_PORT=28579 ORDER_SECONDS=10
for round in 4 5 6; do
  echo "== round $round $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
  for t in sse ws; do
    LABEL_SUFFIX="q3 r$round" scripts/bench --targets tickgate --transports $t fanout1k
    TICKGATE__HUB__COALESCE_WINDOW=0s LABEL_SUFFIX="q3 w0 r$round" scripts/bench --targets tickgate --transports $t fanout1k
    LABEL_SUFFIX="q3 r$round" scripts/bench --targets nchan --transports $t fanout1k
  done
  REDIS_CPU=1 PG_CPU=1 ORDER_RATE=25 LABEL_SUFFIX="q3 split r$round" scripts/bench --targets tickgate cluster-orders
done
for t in sse ws; do
  LABEL_SUFFIX="q3 r1" scripts/bench --targets tickgate --transports $t push500
  LABEL_SUFFIX="q3 r1" scripts/bench --targets nchan --transports $t push500
done
echo "== end $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
