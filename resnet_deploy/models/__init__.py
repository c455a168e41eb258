"""The project's ResNet family and its registry."""

from resnet_deploy.models.registry import ArchSpec, build_model, describe_arch, get_arch, list_archs, parameter_count

__all__ = ["ArchSpec", "build_model", "describe_arch", "get_arch", "list_archs", "parameter_count"]
