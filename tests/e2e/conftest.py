"""The real local stack for end-to-end tests: a KRaft Kafka broker and a Flink cluster on loopback.

``deploy/stack.sh up`` is idempotent: a stack that is already up is reused. Each test module gets
its own topic names, consumer group and transactional-id prefix, so runs never see each other.
"""
from __future__ import annotations

import os
import subprocess
import uuid

import pytest

from jobs.config import REPO_ROOT, load_config


@pytest.fixture(scope="session")
def stack():
    subprocess.run(["bash", str(REPO_ROOT / "deploy" / "stack.sh"), "up"], check=True, timeout=600)
    from jobs.flink import FlinkRest, rest_url, stack_env
    return FlinkRest(rest_url(stack_env()))


@pytest.fixture(scope="session")
def isolated_config():
    return _isolated_config


def _isolated_config(tag: str, *extra: str):
    """A config whose topics, group and transactional ids belong to this test run only."""
    run = f"{tag}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    return load_config(overrides=[
        f"kafka.events_topic={run}.events", f"kafka.recommendation_topic={run}.recommendation",
        f"kafka.cart_topic={run}.cart", f"kafka.churn_topic={run}.churn", f"kafka.dlq_topic={run}.dlq",
        f"kafka.forget_topic={run}.forget", f"kafka.forgotten_topic={run}.forgotten",
        f"kafka.consumer_group={run}", f"kafka.transactional_id_prefix={run}", f"flink.job_name={run}",
        "kafka.startup_mode=earliest-offset", *extra,
    ])



@pytest.fixture(scope="session")
def stack_ctl():
    """Run a ``deploy/stack.sh`` subcommand (e.g. ``restart-taskmanager``); returns its output, fails on error."""
    def run(*args: str, timeout: float = 240) -> str:
        proc = subprocess.run(["bash", str(REPO_ROOT / "deploy" / "stack.sh"), *args], capture_output=True,
                              text=True, timeout=timeout)
        out = (proc.stdout + proc.stderr).strip()
        print(f"$ deploy/stack.sh {' '.join(args)}  (exit {proc.returncode})\n{out}")
        if proc.returncode != 0:
            raise RuntimeError(f"deploy/stack.sh {' '.join(args)} failed (exit {proc.returncode}):\n{out[-3000:]}")
        return out
    return run
