"""NVIDIA devices a TensorRT bundle can be built for: GPU, DLA cores, INT8 support and software stack.

A profile fixes what the bundle is prepared for (the calibration-cache header, the trtexec flags,
INT8 or FP16, whether a DLA core may be asked for). The engine itself is built on the device, which
reads its real GPU and TensorRT version and keys the engine cache on them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from resnet_deploy.errors import ConfigError


@dataclass(frozen=True)
class DeviceProfile:
    """One device: ``tensorrt`` is the version its JetPack (or a desktop install) ships, "major.minor.patch"."""

    name: str
    gpu: str
    compute_capability: tuple[int, int]
    dla_cores: int
    fast_int8: bool
    jetpack: str  # "" for a desktop/server GPU
    tensorrt: str

    def __post_init__(self) -> None:
        if self.dla_cores < 0:
            raise ConfigError(f"device profile {self.name}: dla_cores must be >= 0, got {self.dla_cores}.")
        if len(self.tensorrt.split(".")) != 3:
            raise ConfigError(f"device profile {self.name}: TensorRT version must be major.minor.patch, "
                              f"got {self.tensorrt!r}.")

    @property
    def is_jetson(self) -> bool:
        return bool(self.jetpack)

    @property
    def precision(self) -> str:
        """INT8 where the GPU has fast INT8 kernels; otherwise FP16 (TensorRT would run INT8 slower than FP16)."""
        return "int8" if self.fast_int8 else "fp16"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["compute_capability"] = list(self.compute_capability)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DeviceProfile:
        major, minor = (int(v) for v in d["compute_capability"])
        return cls(str(d["name"]), str(d["gpu"]), (major, minor), int(d["dla_cores"]), bool(d["fast_int8"]),
                   str(d.get("jetpack", "")), str(d["tensorrt"]))


# Versions are what each JetPack release installs: JetPack 6.1/6.2 -> TensorRT 10.3.0 (L4T r36.4),
# JetPack 5.1.x -> TensorRT 8.5.2, JetPack 4.6.1+ -> TensorRT 8.2.1 (the last release for Nano/TX2).
# Fast INT8 (DP4A / INT8 tensor cores) exists from sm 6.1 on, but not on the Tegra sm 5.3 and 6.2 parts.
_PROFILES = (
    # Orin Nano: no DLA in either memory size; one bundle serves both ("orin-nano").
    DeviceProfile("orin-nano", "Jetson Orin Nano 4/8 GB (Ampere)", (8, 7), 0, True, "6.1", "10.3.0"),
    DeviceProfile("orin-nano-4gb", "Jetson Orin Nano 4 GB (Ampere)", (8, 7), 0, True, "6.1", "10.3.0"),
    DeviceProfile("orin-nano-8gb", "Jetson Orin Nano 8 GB (Ampere)", (8, 7), 0, True, "6.1", "10.3.0"),
    # Orin NX: the 8 GB module has one NVDLA v2 core, the 16 GB module two (NVIDIA's Orin NX data sheet).
    DeviceProfile("orin-nx-8gb", "Jetson Orin NX 8 GB (Ampere)", (8, 7), 1, True, "6.1", "10.3.0"),
    DeviceProfile("orin-nx-16gb", "Jetson Orin NX 16 GB (Ampere)", (8, 7), 2, True, "6.1", "10.3.0"),
    DeviceProfile("agx-orin", "Jetson AGX Orin (Ampere)", (8, 7), 2, True, "6.1", "10.3.0"),
    DeviceProfile("xavier-nx", "Jetson Xavier NX (Volta)", (7, 2), 2, True, "5.1", "8.5.2"),
    DeviceProfile("agx-xavier", "Jetson AGX Xavier (Volta)", (7, 2), 2, True, "5.1", "8.5.2"),
    DeviceProfile("nano", "Jetson Nano (Maxwell)", (5, 3), 0, False, "4.6.1", "8.2.1"),
    DeviceProfile("tx2", "Jetson TX2 (Pascal)", (6, 2), 0, False, "4.6.1", "8.2.1"),
    # A discrete GPU: the real one is read on the machine that builds the engine; (7, 5) is the oldest
    # architecture this profile assumes (Turing), which every TensorRT 10 release supports.
    DeviceProfile("desktop", "NVIDIA data-center/desktop GPU", (7, 5), 0, True, "", "10.3.0"),
)
PROFILES: dict[str, DeviceProfile] = {p.name: p for p in _PROFILES}


# Names that mean more than one module with different DLA counts: the user must say which.
AMBIGUOUS = {"orin-nx": ("orin-nx-8gb", "orin-nx-16gb")}


def get_profile(name: str) -> DeviceProfile:
    key = name.lower()
    if key in AMBIGUOUS:
        options = " or ".join(f"{n} ({PROFILES[n].dla_cores} DLA core{'s' if PROFILES[n].dla_cores != 1 else ''})"
                              for n in AMBIGUOUS[key])
        raise ConfigError(f"--device {name} is ambiguous: the modules differ in DLA cores. Give {options}.")
    try:
        return PROFILES[key]
    except KeyError:
        raise ConfigError(
            f"Unknown device {name!r} (--device). Known devices: {', '.join(PROFILES)}."
        ) from None


def jetson_profiles() -> list[str]:
    return [name for name, p in PROFILES.items() if p.is_jetson]


def has_fast_int8(compute_capability: tuple[int, int]) -> bool:
    """Whether TensorRT has fast INT8 kernels on this GPU architecture (DP4A from sm 6.1; not sm 6.0/6.2)."""
    return compute_capability == (6, 1) or compute_capability >= (7, 0)


def describe_profile(p: DeviceProfile) -> str:
    """One line for ``resnet-deploy devices``: GPU, compute capability, DLA cores, software, precision."""
    precision = "int8" if p.fast_int8 else "fp16 (no fast INT8)"
    stack = f"JetPack {p.jetpack} / TensorRT {p.tensorrt}" if p.jetpack else f"TensorRT {p.tensorrt} (any desktop GPU)"
    if p.jetpack.startswith("4."):  # JetPack 4.6's Python is 3.6: the device side is trtexec.sh alone
        stack += " (device side: trtexec.sh only, Python 3.6)"
    return (f"{p.gpu:32s} sm_{p.compute_capability[0]}{p.compute_capability[1]}  DLA x{p.dla_cores}  "
            f"{stack}  {precision}")
