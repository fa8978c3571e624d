#!/bin/bash
# Quiet-window benches (coordinator), 2026-12-06 fourth session. $1: the repository (merged
# main, release built); $2: the "before" binary (main at d7af8ae, the third session's end);
# $3: its config directory.
set -u
cd "$1"
NEW=$PWD/target/release/tickgate
OLD=$2
OLDCFG=$3
R=loadgen/results/2026-12-06-quiet-window-5.jsonl
M=loadgen/results/2026-12-06-quiet-window-5-metrics.txt
export SKIP_BUILD=1 RESULTS=$R METRICS_OUT=$M TICKGATE_PORT=28571 NCHAN_PORT=28572 FLOOR_PORT=28579 ORDER_SECONDS=10
for round in 1 2 3; do
  echo "== round $round $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
  for t in sse ws; do
    if [ $((round % 2)) = 1 ]; then order="new old"; else order="old new"; fi
    for side in $order; do
      bin=$NEW; cfg=config; if [ $side = old ]; then bin=$OLD; cfg=$OLDCFG; fi
      TICKGATE_BIN=$bin TICKGATE_CONFIG_DIR=$cfg LABEL_SUFFIX="q5 $side r$round" scripts/bench --targets tickgate --transports $t fanout1k
    done
    LABEL_SUFFIX="q5 r$round" scripts/bench --targets nchan --transports $t fanout1k
  done
  for side in $order; do
    bin=$NEW; cfg=config; if [ $side = old ]; then bin=$OLD; cfg=$OLDCFG; fi
    TICKGATE_BIN=$bin TICKGATE_CONFIG_DIR=$cfg LABEL_SUFFIX="q5 $side r$round" scripts/bench --targets tickgate --transports "sse ws" idle10k
  done
done
echo "== part 2 $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
for t in sse ws; do
  TICKGATE_BIN=$NEW LABEL_SUFFIX="q5 new r1" scripts/bench --targets tickgate --transports $t push200
  LABEL_SUFFIX="q5 r1" scripts/bench --targets nchan --transports $t push200
done
for t in ws sse; do
  for side in new old; do
    bin=$NEW; cfg=config; if [ $side = old ]; then bin=$OLD; cfg=$OLDCFG; fi
    TICKGATE_BIN=$bin TICKGATE_CONFIG_DIR=$cfg LABEL_SUFFIX="q5 $side r1" scripts/bench --targets tickgate --transports $t market500-throttled
  done
done
echo "== part 3 $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
ORDER_RATES="5 10 25 closed" SWEEP_ROUNDS=2 LABEL_SUFFIX="q5" scripts/bench --targets tickgate order-sweep
FAILOVER_REPEATS=3 LABEL_SUFFIX="q5" scripts/bench --targets tickgate cluster-failover
echo "== end $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
