"""Shared fixtures: the committed model, the schema store, real data paths, and the real local stack.

``stack`` and ``isolated_config`` live here (not in tests/e2e) so an e2e-marked test anywhere, e.g. the
bench smoke test in tests/jobs, can use them. ``deploy/stack.sh up`` is idempotent: a stack that is already
up is reused. Each caller of ``isolated_config`` gets its own topic names, consumer group and
transactional-id prefix, so runs never see each other.
"""
from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("INTENTFLOW_DATA", REPO.parent / "shared" / "data"))
MODEL = Path(os.environ.get("INTENTFLOW_TEST_MODEL", REPO / "models" / "intent_model.onnx"))


@pytest.fixture(scope="session")
def store():
    from schemas import SchemaStore
    return SchemaStore()


@pytest.fixture(scope="session")
def model():
    from udfs.model import IntentModel
    return IntentModel(MODEL, device="cpu")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.fail(f"real data not found at {DATA} (set INTENTFLOW_DATA)")
    return DATA


@pytest.fixture(scope="session")
def model_path() -> Path:
    return MODEL


@pytest.fixture(scope="session")
def stack():
    subprocess.run(["bash", str(REPO / "deploy" / "stack.sh"), "up"], check=True, timeout=600)
    from jobs.flink import FlinkRest, rest_url, stack_env
    return FlinkRest(rest_url(stack_env()))


@pytest.fixture(scope="session")
def isolated_config():
    return _isolated_config


def _isolated_config(tag: str, *extra: str):
    """A config whose topics, group and transactional ids belong to this test run only."""
    from jobs.config import load_config as _load_config

    run = f"{tag}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    return _load_config(overrides=[
        f"kafka.events_topic={run}.events", f"kafka.recommendation_topic={run}.recommendation",
        f"kafka.cart_topic={run}.cart", f"kafka.churn_topic={run}.churn", f"kafka.dlq_topic={run}.dlq",
        f"kafka.forget_topic={run}.forget", f"kafka.forgotten_topic={run}.forgotten",
        f"kafka.consumer_group={run}", f"kafka.transactional_id_prefix={run}", f"flink.job_name={run}",
        "kafka.startup_mode=earliest-offset", *extra,
    ])

