"""NVIDIA Jetson: the TensorRT target for one device profile (``--device``, default ``orin-nano``).

The profile sets the TensorRT version (calibration-cache header, trtexec flags), whether INT8 is
worth it (FP16 on Nano and TX2, which lack fast INT8) and which DLA cores ``--dla-core`` may pick
(GPU fallback on). Options: ``device``, ``dla_core``, ``max_batch``, ``workspace_mb``. The engine is
built on the Jetson with ``resnet-deploy device-build BUNDLE``.
"""

from __future__ import annotations

from resnet_deploy.targets import _trt_config
from resnet_deploy.targets._trt_common import TrtTargetBase


class JetsonTarget(TrtTargetBase):
    name = "jetson"
    summary = "NVIDIA Jetson (--device profile): TensorRT INT8/FP16 bundle, optional DLA, engine built on device"
    preset = _trt_config.JETSON
    option_keys = ("device", "dla_core", "max_batch", "workspace_mb")
