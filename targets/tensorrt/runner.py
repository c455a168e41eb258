"""``run(batch) -> logits`` on a TensorRT engine, with buffers from the CUDA runtime: the device-side runner.

TensorRT 8.5+ name-based I/O (``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``);
the binding-index API (``set_binding_shape``, ``execute_async_v2``) for 8.2-8.4, removed in 10.0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from resnet_deploy.errors import BundleError
from resnet_deploy.targets.tensorrt.cudart import DEVICE_TO_HOST, HOST_TO_DEVICE
from resnet_deploy.targets.tensorrt.engine import GpuInfo, cuda_runtime, gpu_info, import_tensorrt


class TrtRunner:
    """``run(batch) -> logits`` on a TensorRT engine; batches beyond the profile are split, short ones padded."""

    def __init__(self, engine_path: Path, *, dla_core: int | None = None) -> None:
        trt = import_tensorrt()
        self._cuda = cuda = cuda_runtime()
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        if dla_core is not None:  # a DLA engine deserializes onto the core the runtime names (default 0)
            self._runtime.DLA_core = dla_core
        self._engine = self._runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self._engine is None:
            raise BundleError(f"TensorRT {trt.__version__} cannot load {engine_path}: it was built by another "
                              "TensorRT version or for another GPU. Run `resnet-deploy device-build` again.")
        self._context = self._engine.create_execution_context()
        self._v3 = hasattr(self._context, "execute_async_v3")
        e = self._engine
        if self._v3:
            names = [e.get_tensor_name(i) for i in range(e.num_io_tensors)]
            inputs = [n for n in names if e.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
            self._input, self._output = inputs[0], next(n for n in names if n not in inputs)
            lo, _, hi = (tuple(s) for s in e.get_tensor_profile_shape(self._input, 0))
        else:
            self._input, self._output = e.get_binding_name(0), e.get_binding_name(1)
            lo, _, hi = (tuple(s) for s in e.get_profile_shape(0, 0))
        self._min, self._max = int(lo[0]), int(hi[0])
        self._set_shape(hi)
        out_shape = tuple(self._out_shape())
        self._per_image_out = int(np.prod(out_shape[1:]))
        self._stream = cuda.stream_create()
        self._d_in = cuda.malloc(int(np.prod(hi)) * 4)
        self._d_out = cuda.malloc(self._max * self._per_image_out * 4)
        where = (gpu_info() or GpuInfo("GPU", (0, 0))).name + (f", DLA core {dla_core}" if dla_core is not None else "")
        self.description = f"TensorRT {trt.__version__} on {where}"

    def _set_shape(self, shape: tuple[int, ...]) -> None:
        if self._v3:
            self._context.set_input_shape(self._input, shape)
        else:
            self._context.set_binding_shape(0, shape)

    def _out_shape(self):
        return self._context.get_tensor_shape(self._output) if self._v3 else self._context.get_binding_shape(1)

    def run(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        return np.concatenate([self._run_chunk(batch[i:i + self._max]) for i in range(0, len(batch), self._max)])

    def _run_chunk(self, chunk: np.ndarray) -> np.ndarray:
        cuda, n = self._cuda, len(chunk)
        if n < self._min:  # a static (DLA) profile: pad with zeros, drop the padding's logits
            chunk = np.concatenate([chunk, np.zeros((self._min - n, *chunk.shape[1:]), np.float32)])
        self._set_shape(chunk.shape)
        out = np.empty((len(chunk), self._per_image_out), dtype=np.float32)
        cuda.copy_async(self._d_in, chunk.ctypes.data, chunk.nbytes, HOST_TO_DEVICE, self._stream)
        if self._v3:
            self._context.set_tensor_address(self._input, int(self._d_in))
            self._context.set_tensor_address(self._output, int(self._d_out))
            ok = self._context.execute_async_v3(stream_handle=int(self._stream))
        else:
            ok = self._context.execute_async_v2([int(self._d_in), int(self._d_out)], int(self._stream))
        if not ok:
            raise BundleError("TensorRT failed to enqueue the engine; run with a smaller batch or rebuild it.")
        cuda.copy_async(out.ctypes.data, self._d_out, out.nbytes, DEVICE_TO_HOST, self._stream)
        cuda.synchronize(self._stream)
        return out[:n]

    def close(self) -> None:
        cuda = getattr(self, "_cuda", None)
        if cuda is None:
            return
        for ptr in (getattr(self, "_d_in", None), getattr(self, "_d_out", None)):
            if ptr is not None:
                cuda.free(ptr)
        if getattr(self, "_stream", None) is not None:
            cuda.stream_destroy(self._stream)
        self._cuda = None

    def __del__(self) -> None:
        self.close()
