#!/bin/bash
# Quiet-window benches of the fifth session (issue 16): order -> ack at 16 users, paced at
# 5, 10 and 25 orders/s per user and closed loop; single node, the cluster (new build), the
# cluster (fourth session's build, "old"), and the new cluster with Redis + PostgreSQL on CPU 1
# ("db1"). Sides alternate from round to round. Arguments: repo dir, old binary, old config.
set -u
cd "$1"
NEW=$PWD/target/release/tickgate
OLD=$2
OLDCFG=$3
R=loadgen/results/2026-12-06-quiet-window-9.jsonl
export SKIP_BUILD=1 RESULTS=$R TICKGATE_PORT=28571 NODE_PORT_BASE=28591 ORDER_SECONDS=10
run() { # side rate round
  local side=$1 rate=$2 round=$3 env=()
  [ "$rate" != closed ] && env+=(ORDER_RATE=$rate)
  case $side in
    single) env+=(TICKGATE_BIN=$NEW); c=orders ;;
    new) env+=(TICKGATE_BIN=$NEW); c=cluster-orders ;;
    old) env+=(TICKGATE_BIN=$OLD TICKGATE_CONFIG_DIR=$OLDCFG); c=cluster-orders ;;
    db1) env+=(TICKGATE_BIN=$NEW REDIS_CPU=1 PG_CPU=1); c=cluster-orders ;;
  esac
  echo "-- $side $rate r$round $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
  env "${env[@]}" LABEL_SUFFIX="q9 $side r$round" scripts/bench --targets tickgate $c 2>&1 | grep -E "^order ->|^from slot|^cpu per"
}
for round in 1 2 3; do
  echo "== round $round $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
  for rate in 5 10 25; do
    if [ $((round % 2)) = 1 ]; then sides="single new old db1"; else sides="db1 old new single"; fi
    for side in $sides; do run $side $rate $round; done
  done
done
for round in 1 2; do
  if [ $round = 1 ]; then sides="single new old"; else sides="old new single"; fi
  for side in $sides; do run $side closed $round; done
done
echo "== failover $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
TICKGATE_BIN=$NEW LABEL_SUFFIX="q9 new" scripts/bench --targets tickgate cluster-failover 2>&1 | tail -5
echo "== end $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
