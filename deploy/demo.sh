#!/usr/bin/env bash
# README command 1: set everything up and run the intent job end to end on real Taobao events.
#   venv + deps + JVM artifacts (cached)  ->  Kafka (KRaft) + Flink cluster on loopback
#   ->  job submitted  ->  real events replayed  ->  per-topic summary + sample intents.
# Extra arguments go to `intentflow demo` (e.g. --dataset taobao --limit 20000).
set -euo pipefail
R="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
bash "$R/deploy/stack.sh" setup
bash "$R/deploy/stack.sh" up
exec "$R/.venv/bin/intentflow" demo "$@"
