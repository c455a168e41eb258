"""TensorRT on a desktop or data-center NVIDIA GPU: INT8 by explicit Q/DQ, engine built where the GPU is.

The bundle carries the Q/DQ ONNX, the calibration cache, build_config.json and trtexec.sh; its
simulated INT8 row runs the Q/DQ graph under ONNX Runtime on the CPU. Options: ``max_batch``,
``workspace_mb`` (``device`` and ``dla_core`` belong to ``--target jetson`` and are ignored here).
"""

from __future__ import annotations

from resnet_deploy.targets import _trt_config
from resnet_deploy.targets._trt_common import TrtTargetBase


class TensorRTTarget(TrtTargetBase):
    name = "tensorrt"
    aliases = ("trt",)
    summary = "TensorRT on an NVIDIA GPU: INT8 Q/DQ ONNX + calibration cache, engine built on the GPU"
    preset = _trt_config.DESKTOP
    option_keys = ("max_batch", "workspace_mb")
