"""The project's ResNet family and its registry."""

from resnet_deploy.models.registry import ArchSpec, build_model, get_arch, list_archs

__all__ = ["ArchSpec", "build_model", "get_arch", "list_archs"]
