"""The job's entry point refuses a bad model before anything is submitted to the cluster."""
import pytest

from jobs import intent_job
from udfs.model import ModelLoadError


def test_missing_model_fails_before_submission(tmp_path):
    with pytest.raises(ModelLoadError, match="model file not found"):
        intent_job.main(["--set", f"model.path={tmp_path / 'nope.onnx'}"])


def test_corrupt_model_fails_before_submission(tmp_path):
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(b"\x08\x07not a protobuf at all")
    with pytest.raises(ModelLoadError, match="cannot load model"):
        intent_job.main(["--set", f"model.path={bad}"])


def test_model_window_must_match_the_configured_sequence_length():
    with pytest.raises(ModelLoadError, match="sequence_length=20"):
        intent_job.main(["--set", "scoring.sequence_length=20"])
