"""Compiled CPU runtimes for inference: OpenVINO or ONNX Runtime behind the call contract Keras models have.

:func:`segcore.infer.predict_batch` calls ``model(x, training=False)`` with ``x`` a ``B,H,W,1`` float32 batch
in [0, 1] and reads ``B,H,W,K`` softmax probabilities. A :class:`CompiledPredictor` takes the same call, so
:func:`segcore.pipeline.segment`, the batch job and the app work unchanged with either; anything that needs the
network's layers (MC dropout, fine-tuning) keeps using the Keras model.

The compiled model is exported once per model file and cached beside the model version, keyed by the SHA-256 of
``model.keras`` (``<model dir>/.runtime/<hash>/``; when that folder is read-only, under the data directory).
It is exported and loaded lazily, on the first call. When the runtime's package is not installed, or export
fails, the predictor falls back to the Keras model with a warning: it never fails where Keras would work.

Runtimes (``name``): ``"keras"`` (the model itself), ``"openvino"``, ``"onnxruntime"``; ``precision`` is
``"f32"`` for all, or ``"bf16"`` for OpenVINO on CPUs with bf16 support (elsewhere OpenVINO runs f32, and
``active`` says so). The default (:data:`DEFAULT_RUNTIME`, chosen on ``bench/runtime.py``; see
docs/SCALING.md) is OpenVINO f32: Keras' masks and probabilities on every CPU. bf16 passes the agreement bar
on the sample test set (>= 99.9 % of argmax pixels, mean Dice within 0.001 of Keras) but moves probabilities by
up to ~0.2 and depends on the CPU, so it is opt-in (``"openvino-bf16"``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_RUNTIME",
    "RUNTIMES",
    "CompiledPredictor",
    "RuntimeSpec",
    "compiled_predictor",
    "load_predictor",
    "model_file_hash",
    "runtime_cache_dir",
]

RUNTIMES = ("keras", "openvino", "onnxruntime")
PRECISIONS = {"keras": ("f32",), "openvino": ("f32", "bf16"), "onnxruntime": ("f32",)}


@dataclasses.dataclass(frozen=True)
class RuntimeSpec:
    """Which runtime runs the network.

    Parameters
    ----------
    name : str
        ``"keras"``, ``"openvino"`` or ``"onnxruntime"``.
    precision : str
        ``"f32"``; ``"bf16"`` for OpenVINO only.
    threads : int or None
        Inference threads (None: the runtime's default, all cores).

    Examples
    --------
    >>> RuntimeSpec("openvino", "bf16").label
    'openvino-bf16'
    >>> RuntimeSpec("tvm")
    Traceback (most recent call last):
    ...
    ValueError: Unknown runtime 'tvm'. Expected one of ['keras', 'openvino', 'onnxruntime'].
    """

    name: str = "openvino"
    precision: str = "f32"
    threads: int | None = None

    def __post_init__(self):
        if self.name not in RUNTIMES:
            raise ValueError(f"Unknown runtime '{self.name}'. Expected one of {list(RUNTIMES)}.")
        if self.precision not in PRECISIONS[self.name]:
            raise ValueError(f"Runtime '{self.name}' supports precision {list(PRECISIONS[self.name])}. "
                             f"Got '{self.precision}'.")
        if self.threads is not None and int(self.threads) < 1:
            raise ValueError(f"threads must be >= 1 or None. Got {self.threads}.")

    @property
    def label(self) -> str:
        return self.name if self.name == "keras" else f"{self.name}-{self.precision}"

    @classmethod
    def parse(cls, text: str, threads: int | None = None) -> RuntimeSpec:
        """``"openvino"``, ``"openvino-bf16"``, ``"onnxruntime"``, ``"keras"`` or ``"auto"`` (the default)."""
        if text in ("auto", "", None):
            return dataclasses.replace(DEFAULT_RUNTIME, threads=threads)
        name, _, precision = text.partition("-")
        return cls(name, precision or "f32", threads)


DEFAULT_RUNTIME = RuntimeSpec("openvino", "f32")


def model_file_hash(model_dir: str | Path) -> str:
    """SHA-256 of ``<model_dir>/model.keras`` (the cache key of its compiled forms)."""
    h = hashlib.sha256()
    with open(Path(model_dir) / "model.keras", "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".probe-"):
            return True
    except OSError:
        return False


def runtime_cache_dir(model_dir: str | Path, file_hash: str | None = None) -> Path:
    """``<model_dir>/.runtime/<hash[:16]>``, or ``<data dir>/runtime_cache/<hash[:16]>`` if that is read-only."""
    file_hash = file_hash or model_file_hash(model_dir)
    beside = Path(model_dir) / ".runtime" / file_hash[:16]
    if _writable(beside.parent):
        return beside
    from .store import default_data_dir

    return default_data_dir() / "runtime_cache" / file_hash[:16]


def _export_openvino(model, target: Path) -> None:
    import openvino as ov

    with tempfile.TemporaryDirectory(prefix="segcore-savedmodel-") as tmp:
        model.export(tmp, format="tf_saved_model", verbose=False)
        ov_model = ov.convert_model(tmp)
    ov.save_model(ov_model, str(target / "model.xml"), compress_to_fp16=False)


def _export_onnx(model, target: Path) -> None:
    x = np.zeros((1, 64, 64, int(model.inputs[0].shape[-1] or 1)), np.float32)
    model(x, training=False)  # Keras exports only a model that has been called
    model.export(str(target / "model.onnx"), format="onnx", verbose=False)


_EXPORTERS = {"openvino": (_export_openvino, "model.xml"), "onnxruntime": (_export_onnx, "model.onnx")}


def _exported(model, cache: Path, runtime: str) -> Path:
    """The exported file for ``runtime`` in ``cache``, exporting it first (atomically) if absent."""
    export, filename = _EXPORTERS[runtime]
    final = cache / runtime
    if (final / filename).is_file():
        return final / filename
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{runtime}.tmp-{os.getpid()}-", dir=cache))
    try:
        export(model, tmp)
        try:
            os.replace(tmp, final)
        except OSError:  # another process exported it first: keep theirs
            if not (final / filename).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final / filename


class CompiledPredictor:
    """A Keras model's forward pass in a compiled runtime; called like the model: ``p(x, training=False)``.

    Parameters
    ----------
    model : keras.Model
        The network (used to export, and as the fallback).
    model_dir : str or Path
        The model version's folder (its ``model.keras`` hash keys the cache).
    spec : RuntimeSpec

    Attributes
    ----------
    active : str
        What runs the network: ``spec.label`` once loaded, ``"keras"`` after a fallback (None before the first call).
    fallback_reason : str or None
        Why the compiled runtime is not used.
    """

    def __init__(self, model, model_dir: str | Path, spec: RuntimeSpec = DEFAULT_RUNTIME):
        self.model = model
        self.model_dir = Path(model_dir)
        self.spec = spec
        self.active: str | None = "keras" if spec.name == "keras" else None
        self.fallback_reason: str | None = None
        self._run = None
        self._lock = threading.Lock()

    def __call__(self, x: Any, training: bool = False) -> np.ndarray:
        if training:
            raise ValueError("A CompiledPredictor only runs inference (training=False); use the Keras model.")
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 4:
            raise ValueError(f"Expected a B,H,W,C batch. Got shape {x.shape}.")
        return self._runner()(x)

    def load(self) -> CompiledPredictor:
        """Export (if not cached) and load now instead of on the first call."""
        self._runner()
        return self

    def _runner(self):
        if self._run is None:
            with self._lock:
                if self._run is None:
                    self._run = self._make_runner()
        return self._run

    def _keras(self, reason: str | None):
        if reason:
            self.fallback_reason = reason
            warnings.warn(f"{self.spec.label} is not used, running the Keras model instead: {reason}", stacklevel=4)
        self.active = "keras"
        model = self.model
        return lambda x: np.asarray(model(x, training=False))

    def _make_runner(self):
        if self.spec.name == "keras":
            return self._keras(None)
        try:
            if self.spec.name == "openvino":
                import openvino  # noqa: F401
            else:
                import onnxruntime  # noqa: F401
        except ImportError as exc:
            pkg = "openvino" if self.spec.name == "openvino" else "onnxruntime"
            return self._keras(f"the '{pkg}' package is not installed (pip install {pkg}): {exc}")
        try:
            path = _exported(self.model, runtime_cache_dir(self.model_dir), self.spec.name)
            if self.spec.name == "openvino":
                run, precision = _load_openvino(path, self.spec)
            else:
                run, precision = _load_onnx(path, self.spec), "f32"
        except Exception as exc:  # noqa: BLE001 - any export/load failure falls back to the model that works
            return self._keras(f"export or load failed: {type(exc).__name__}: {exc}")
        if precision != self.spec.precision:  # e.g. bf16 asked on a CPU without bf16: OpenVINO runs f32
            warnings.warn(f"{self.spec.label} runs in {precision} on this CPU.", stacklevel=4)
        self.active = f"{self.spec.name}-{precision}"
        return run


def _load_openvino(path: Path, spec: RuntimeSpec):
    import openvino as ov

    core = ov.Core()
    cfg: dict[str, Any] = {"INFERENCE_PRECISION_HINT": spec.precision}
    if spec.threads:
        cfg["INFERENCE_NUM_THREADS"] = int(spec.threads)
    compiled = core.compile_model(core.read_model(str(path)), "CPU", cfg)
    hint = str(compiled.get_property("INFERENCE_PRECISION_HINT")).lower()  # what the CPU plugin will run
    precision = "bf16" if "bf" in hint else "f32" if ("f32" in hint or "float32" in hint) else hint
    request = compiled.create_infer_request()
    lock = threading.Lock()  # one infer request: calls from several threads take turns

    def run(x: np.ndarray) -> np.ndarray:
        with lock:
            return np.array(request.infer([x])[0], dtype=np.float32, copy=True)

    return run, precision


def _load_onnx(path: Path, spec: RuntimeSpec):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if spec.threads:
        opts.intra_op_num_threads = int(spec.threads)
        opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        return np.asarray(sess.run(None, {name: x})[0], dtype=np.float32)

    return run


def compiled_predictor(model, model_dir: str | Path, runtime: str | RuntimeSpec = "auto",
                       threads: int | None = None):
    """``model`` itself for ``"keras"``, else a lazily loaded :class:`CompiledPredictor`."""
    spec = runtime if isinstance(runtime, RuntimeSpec) else RuntimeSpec.parse(runtime, threads)
    if spec.name == "keras":
        return model
    return CompiledPredictor(model, model_dir, spec)


def load_predictor(model_dir: str | Path, runtime: str | RuntimeSpec = "auto", threads: int | None = None):
    """Load a saved model version and wrap it: returns ``(predictor, keras model, ModelConfig)``."""
    from .models import load_model

    model, config = load_model(model_dir)
    return compiled_predictor(model, model_dir, runtime, threads), model, config
