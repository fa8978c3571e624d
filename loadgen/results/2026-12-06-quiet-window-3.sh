#!/bin/bash
# Quiet-window benches, 2026-12-06 third session, part 1. Usage: bash THIS_FILE REPO_DIR (after `cargo build --release --workspace`).
set -u
cd "$1"
R=loadgen/results/2026-12-06-quiet-window-3.jsonl
export SKIP_BUILD=1 RESULTS=$R TICKGATE_PORT=28571 NCHAN_PORT=28572 FLOOR_PORT=28579 ORDER_SECONDS=10
for round in 1 2 3; do
  echo "== round $round $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
  for case in fanout1k push200; do
    for t in sse ws; do
      LABEL_SUFFIX="q3 r$round" scripts/bench --targets tickgate --transports $t $case
      LABEL_SUFFIX="q3 r$round" scripts/bench --targets nchan --transports $t $case
    done
  done
  for t in ws sse; do
    LABEL_SUFFIX="q3 r$round" scripts/bench --targets tickgate --transports $t market500
    LABEL_SUFFIX="q3 r$round" scripts/bench --targets tickgate --transports $t market500-throttled
  done
  LABEL_SUFFIX="q3 r$round" scripts/bench --targets tickgate --transports "sse ws" idle10k
  LABEL_SUFFIX="q3 r$round" scripts/bench --targets tickgate orders cluster-orders
  ORDER_RATE=25 LABEL_SUFFIX="q3 r$round" scripts/bench --targets tickgate orders cluster-orders
done
echo "== end $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
