#!/usr/bin/env bash
# README command 2: run all tests. Installs what they need (venv, JVM artifacts); the end-to-end
# tests start the local Kafka broker and Flink cluster themselves (deploy/stack.sh up, idempotent).
# Extra arguments go to pytest (e.g. -m "not e2e" for the fast unit tests only).
set -euo pipefail
R="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
bash "$R/deploy/stack.sh" setup
cd "$R"
exec "$R/.venv/bin/python" -m pytest "$@"
