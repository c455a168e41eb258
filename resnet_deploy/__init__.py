"""resnet-deploy: a ResNet classifier from PyTorch to a validated INT8 deployment bundle.

Importing this package is cheap: torch, onnx and the target SDKs are imported by the modules
that need them, so `resnet-deploy --help` and the on-device path work without them.
"""

__version__ = "0.1.0"

from resnet_deploy.api import Bundle, build, load_bundle  # cheap: the rest is imported when called

__all__ = ["Bundle", "__version__", "build", "load_bundle"]
