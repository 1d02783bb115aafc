"""ONNX Runtime session for the intent model: created once per worker, checked against the contract.

``IntentModel`` picks the CUDA execution provider when it actually loads (onnxruntime-gpu lists
CUDA even on machines without a GPU; a failed load falls back to CPU inside ORT), and refuses a
model whose inputs, outputs or metadata do not match :mod:`udfs.contract`.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from udfs import contract

log = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """The model file is missing, unreadable or does not fit the contract (fail the job at start)."""


def _providers(device: str) -> list[str]:
    import onnxruntime as ort
    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda" and "CUDAExecutionProvider" not in available:
        raise ModelLoadError("model.device=cuda but this onnxruntime has no CUDAExecutionProvider")
    if "CUDAExecutionProvider" in available and device in ("auto", "cuda"):
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class IntentModel:
    """One InferenceSession plus the contract facts the job needs (window, hidden, version)."""

    def __init__(self, path: str | Path, device: str = "auto", intra_op_threads: int = 1,
                 expected_window: int | None = None):
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise ModelLoadError(f"model file not found: {path}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = _providers(device)
        if providers[0] == "CUDAExecutionProvider":
            ort.set_default_logger_severity(4)  # a missing CUDA runtime is expected on CPU hosts; we log it ourselves
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises several types for corrupt files
            raise ModelLoadError(f"cannot load model {path}: {type(exc).__name__}: {exc}") from None
        finally:
            ort.set_default_logger_severity(2)
        self.provider = self.session.get_providers()[0]
        if device == "cuda" and self.provider != "CUDAExecutionProvider":
            raise ModelLoadError("model.device=cuda but the CUDA execution provider did not load")
        if providers[0] == "CUDAExecutionProvider" and self.provider != "CUDAExecutionProvider":
            log.info("CUDA execution provider unavailable here; scoring on CPU")
        self.path = path
        self._check_contract(expected_window)
        self._output_names = [o.name for o in contract.OUTPUTS]

    def _check_contract(self, expected_window: int | None) -> None:
        meta = self.session.get_modelmeta().custom_metadata_map
        problems = []
        if meta.get(contract.META_CONTRACT) != contract.CONTRACT_VERSION:
            problems.append(f"metadata {contract.META_CONTRACT}={meta.get(contract.META_CONTRACT)!r}, "
                            f"expected {contract.CONTRACT_VERSION!r}")
        try:
            self.window = int(meta[contract.META_WINDOW])
            self.hidden = int(meta[contract.META_HIDDEN])
            self.version = meta[contract.META_VERSION]
        except (KeyError, ValueError) as exc:
            raise ModelLoadError(f"model {self.path}: missing/invalid metadata {exc}") from None
        dims = dict(contract.DIMS_FIXED, window=self.window, hidden=self.hidden)
        ort_type = {"float32": "tensor(float)", "int64": "tensor(int64)"}
        for kind, specs, actual in (("input", contract.INPUTS, self.session.get_inputs()),
                                    ("output", contract.OUTPUTS, self.session.get_outputs())):
            by_name = {a.name: a for a in actual}
            if set(by_name) != {s.name for s in specs}:
                problems.append(f"{kind}s {sorted(by_name)} != contract {sorted(s.name for s in specs)}")
                continue
            for spec in specs:
                a = by_name[spec.name]
                if a.type != ort_type[spec.dtype]:
                    problems.append(f"{kind} {spec.name}: type {a.type}, contract {spec.dtype}")
                if len(a.shape) != len(spec.shape):
                    problems.append(f"{kind} {spec.name}: rank {len(a.shape)}, contract {len(spec.shape)}")
                    continue
                for got, sym in zip(a.shape, spec.shape):
                    if isinstance(got, int) and sym != "batch" and got != dims[sym]:
                        problems.append(f"{kind} {spec.name}: dim {sym}={got}, expected {dims[sym]}")
        if expected_window is not None and expected_window != self.window:
            problems.append(f"scoring.sequence_length={expected_window} but the model was trained "
                            f"with window {self.window}")
        if problems:
            raise ModelLoadError(f"model {self.path} does not match the IntentFlow contract: " + "; ".join(problems))

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One batched call; ``feeds`` follows contract.INPUTS. Never called with an empty batch."""
        batch = feeds["h_prev"].shape[0]
        if batch == 0:
            raise ValueError("empty batch must not reach ONNX Runtime")
        outs = self.session.run(self._output_names, feeds)
        return dict(zip(self._output_names, outs))
