"""Model faults fail the job at start with a clear message (never mid-stream)."""
import pytest

from udfs.model import IntentModel, ModelLoadError


def test_missing_model_file(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        IntentModel(tmp_path / "nope.onnx", device="cpu")


def test_corrupt_model_file(tmp_path, model_path):
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(model_path.read_bytes()[:5000])
    with pytest.raises(ModelLoadError, match="cannot load model"):
        IntentModel(bad, device="cpu")


def test_window_mismatch_with_the_config(model_path):
    with pytest.raises(ModelLoadError, match="sequence_length=40"):
        IntentModel(model_path, device="cpu", expected_window=40)


def test_auto_device_falls_back_to_cpu_without_cuda(model_path):
    model = IntentModel(model_path, device="auto")
    assert model.provider in ("CPUExecutionProvider", "CUDAExecutionProvider")
