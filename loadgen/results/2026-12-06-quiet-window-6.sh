#!/bin/bash
# Quiet-window benches, part 2 of the fourth session: three more rounds of fanout1k (new/old
# alternated, Nchan), and two more rounds of the order sweep at lower rates. Arguments as
# bench-window5.sh.
set -u
cd "$1"
NEW=$PWD/target/release/tickgate
OLD=$2
OLDCFG=$3
R=loadgen/results/2026-12-06-quiet-window-6.jsonl
M=loadgen/results/2026-12-06-quiet-window-6-metrics.txt
export SKIP_BUILD=1 RESULTS=$R METRICS_OUT=$M TICKGATE_PORT=28571 NCHAN_PORT=28572 FLOOR_PORT=28579 ORDER_SECONDS=10
for round in 4 5 6; do
  echo "== round $round $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
  for t in sse ws; do
    if [ $((round % 2)) = 1 ]; then order="new old"; else order="old new"; fi
    for side in $order; do
      bin=$NEW; cfg=config; if [ $side = old ]; then bin=$OLD; cfg=$OLDCFG; fi
      TICKGATE_BIN=$bin TICKGATE_CONFIG_DIR=$cfg LABEL_SUFFIX="q5 $side r$round" scripts/bench --targets tickgate --transports $t fanout1k
    done
    LABEL_SUFFIX="q5 r$round" scripts/bench --targets nchan --transports $t fanout1k
  done
done
echo "== sweep $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
ORDER_RATES="2 5 10" SWEEP_ROUNDS=2 LABEL_SUFFIX="q6" scripts/bench --targets tickgate order-sweep
echo "== end $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
