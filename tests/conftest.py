"""Shared fixtures: the committed model, the schema store, real data paths."""
from __future__ import annotations

import os
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
