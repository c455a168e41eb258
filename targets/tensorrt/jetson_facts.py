"""What a device report records about the Jetson it ran on: L4T and JetPack release, power mode, whether
``jetson_clocks`` pinned the clocks, and the TensorRT that ran. Read from the files and tools JetPack
ships (``/etc/nv_tegra_release``, ``nvpmodel -q``, ``jetson_clocks --show``); absent ones are left out."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Callable

TEGRA_RELEASE = Path("/etc/nv_tegra_release")
# L4T release -> JetPack (NVIDIA's JetPack archive); the profiles' TensorRT follows the JetPack.
_JETPACK = {"32.7.1": "4.6.1", "32.7.2": "4.6.2", "32.7.3": "4.6.3", "32.7.4": "4.6.4", "32.7.5": "4.6.5",
            "35.2.1": "5.1", "35.3.1": "5.1.1", "35.4.1": "5.1.2", "35.5.0": "5.1.3", "35.6.0": "5.1.4",
            "36.3.0": "6.0", "36.4.0": "6.1", "36.4.3": "6.2", "36.4.4": "6.2.1"}
_RELEASE = re.compile(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)")
_FREQS = re.compile(r"MinFreq=(\d+)\s+MaxFreq=(\d+)")


def l4t_release(text: str) -> str | None:
    """'# R35 (release), REVISION: 4.1, ...' -> '35.4.1'."""
    m = _RELEASE.search(text)
    return f"{m.group(1)}.{m.group(2)}" if m else None


def power_mode(nvpmodel_q: str) -> str | None:
    """``nvpmodel -q``: 'NV Power Mode: MAXN\\n0' -> 'MAXN (mode 0)'."""
    m = re.search(r"NV Power Mode:\s*(\S+)", nvpmodel_q)
    if not m:
        return None
    mode = next((line.strip() for line in nvpmodel_q.splitlines()[1:] if line.strip().isdigit()), None)
    return f"{m.group(1)} (mode {mode})" if mode is not None else m.group(1)


def clocks_pinned(show: str) -> bool | None:
    """``jetson_clocks --show``: jetson_clocks pins every CPU and the GPU (MinFreq = MaxFreq) and sets the
    memory clock's override (EMC ... FreqOverride=1); None when the output has no clock lines."""
    verdicts = []
    for line in show.splitlines():
        m = _FREQS.search(line)
        if m is None:
            continue
        if line.lstrip().startswith("EMC"):
            verdicts.append("FreqOverride=1" in line or m.group(1) == m.group(2))
        else:
            verdicts.append(m.group(1) == m.group(2))
    return all(verdicts) if verdicts else None


def _run(cmd: list[str]) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def jetson_facts(read: Callable[[Path], str | None] | None = None,
                 run: Callable[[list[str]], str | None] = _run) -> dict[str, Any]:
    """The facts above, or {} off a Jetson. ``read``/``run`` are injectable for recorded outputs."""
    def read_file(path: Path) -> str | None:
        try:
            return path.read_text()
        except OSError:
            return None

    release_text = (read or read_file)(TEGRA_RELEASE)
    if release_text is None:
        return {}
    l4t = l4t_release(release_text)
    facts: dict[str, Any] = {"l4t": l4t, "jetpack": _JETPACK.get(l4t or "", "unknown (L4T not in the table)")}
    nvp = run(["nvpmodel", "-q"])
    if nvp is not None:
        facts["power_mode"] = power_mode(nvp)
    clocks = run(["jetson_clocks", "--show"])
    if clocks is not None:
        facts["jetson_clocks"] = clocks_pinned(clocks)
    return facts
