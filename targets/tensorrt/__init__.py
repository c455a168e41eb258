"""TensorRT for NVIDIA GPUs and Jetson devices: two targets over one Q/DQ bundle layout.

``target`` compiles the bundle folder (Q/DQ ONNX, calibration cache, build_config.json, trtexec.sh);
``engine`` and ``runner`` are the device side (TensorRT's Python API); ``config``, ``profiles``,
``calibration_cache``, ``engine_cache`` and ``trtexec`` are pure Python, testable without a GPU.
"""

from resnet_deploy.targets.tensorrt.target import JetsonTarget, TensorRTTarget

__all__ = ["JetsonTarget", "TensorRTTarget"]
