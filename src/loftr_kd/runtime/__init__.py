"""Running exported and trained students: backends, onnxruntime sessions, timing, the backend vocabulary.

- :mod:`~loftr_kd.runtime.backend`: the :class:`Backend` protocol (whole pairs, or ``encode`` / ``match``
  halves: :class:`EncodedBatch`, :func:`split_path`), :class:`ModelOutputs`, :class:`ModelGeometry` (the
  one reader of a model file's geometry metadata), the backend names.
- :mod:`~loftr_kd.runtime.torch_backend`, :mod:`~loftr_kd.runtime.onnx_backend`,
  :mod:`~loftr_kd.runtime.tensorrt_backend`: the three backends.
- :mod:`~loftr_kd.runtime.sessions`: ``ort_session``, ``op_histogram``, interleaved timing.

Importing this package imports neither torch nor onnxruntime.
"""

from loftr_kd.runtime.backend import (
    BACKENDS,
    BENCH_BACKEND,
    MATCHER_BACKEND,
    SPLIT_PARTS,
    Backend,
    EncodedBatch,
    MatcherError,
    ModelGeometry,
    ModelOutputs,
    bench_backend,
    check_backend,
    matcher_backend,
    no_split_error,
    split_path,
)
from loftr_kd.runtime.onnx_backend import OnnxBackend
from loftr_kd.runtime.sessions import (
    load_model,
    op_histogram,
    ort_session,
    read_metadata,
    time_interleaved,
    time_onnx,
    time_sessions,
    timing_summary,
)
from loftr_kd.runtime.tensorrt_backend import TensorRTBackend, TensorRTRunner, TensorRTUnavailable
from loftr_kd.runtime.torch_backend import DEFAULT_TORCH_THREADS, TorchBackend, torch_threads

__all__ = [
    "BACKENDS",
    "BENCH_BACKEND",
    "DEFAULT_TORCH_THREADS",
    "MATCHER_BACKEND",
    "SPLIT_PARTS",
    "Backend",
    "EncodedBatch",
    "MatcherError",
    "ModelGeometry",
    "ModelOutputs",
    "OnnxBackend",
    "TensorRTBackend",
    "TensorRTRunner",
    "TensorRTUnavailable",
    "TorchBackend",
    "bench_backend",
    "check_backend",
    "load_model",
    "matcher_backend",
    "no_split_error",
    "op_histogram",
    "ort_session",
    "read_metadata",
    "split_path",
    "time_interleaved",
    "time_onnx",
    "time_sessions",
    "timing_summary",
    "torch_threads",
]
