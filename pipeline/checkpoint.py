"""Reading untrusted checkpoints safely and matching them to an architecture.

Only tensors and plain containers are ever deserialised: ``torch.load(weights_only=True)`` for
pickle-based files and safetensors otherwise. A checkpoint that needs arbitrary unpickling is refused.
"""

from __future__ import annotations

import json
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resnet_deploy.errors import CheckpointError, ConfigError
from resnet_deploy.models import build_model, get_arch, list_archs

TORCH_SUFFIXES = (".pt", ".pth", ".th", ".tar", ".ckpt", ".bin")
NESTED_KEYS = ("state_dict", "model_state_dict", "model", "net", "ema", "model_ema")
PREFIXES = ("module.", "_orig_mod.", "model.", "net.")
# Other public layouts of the same networks, renamed to ours (CIFAR checkpoints call fc "linear").
KEY_ALIASES = ((re.compile(r"^linear\."), "fc."), (re.compile(r"\.shortcut\.(\d)\."), r".downsample.\1."))
META_KEY = "resnet_deploy"


@dataclass(frozen=True)
class LoadedModel:
    """A model in eval mode and what is known of it."""

    model: nn.Module
    arch: str
    num_classes: int
    in_channels: int
    shortcut: str
    source: str
    meta: dict[str, Any] = field(default_factory=dict)


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict with our key names, metadata) from a .pt/.pth/.th/.tar or .safetensors file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"--checkpoint: {path} does not exist or is not a file. Check the path.")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        raw, meta = _read_safetensors(path)
    elif suffix in TORCH_SUFFIXES:
        raw, meta = _read_torch(path)
    else:
        raise CheckpointError(
            f"--checkpoint: {path} has suffix {path.suffix!r}; give a PyTorch file "
            f"({', '.join(TORCH_SUFFIXES)}) or a .safetensors file."
        )
    return normalize_keys(raw, path), meta


def _read_safetensors(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        tensors = load_file(str(path))
        meta = json.loads(header[META_KEY]) if META_KEY in header else {}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"--checkpoint: {path} is not a readable safetensors file ({err}).") from None
    return tensors, meta


def _read_torch(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # Only a refused GLOBAL means Python objects; garbage bytes fail here too ("Unsupported operand").
        lines = [line.strip() for line in str(err).splitlines()]
        refused = [line for line in lines if "GLOBAL" in line]
        if not refused:
            what = next((line for line in lines if line.startswith("Unsupported")), "invalid pickle data")
            raise _unreadable(path, f"UnpicklingError: {what}") from None
        raise CheckpointError(
            f"--checkpoint: {path} holds pickled Python objects besides tensors ({refused[0][:200]}). Checkpoints "
            "are untrusted input, so resnet-deploy never unpickles arbitrary objects. Re-save only the weights: "
            "torch.save(model.state_dict(), 'weights.pt') or safetensors.torch.save_file(...)."
        ) from None
    except Exception as err:  # noqa: BLE001 - damaged files make torch.load raise nearly anything
        first = str(err).splitlines()[0][:160] if str(err) else "corrupt"
        raise _unreadable(path, f"{err.__class__.__name__}: {first}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"--checkpoint: {path} holds a {type(obj).__name__}, not a state dict. Save model.state_dict()."
        )
    meta = obj.get(META_KEY, {}) if isinstance(obj.get(META_KEY), dict) else {}
    for key in NESTED_KEYS:
        if isinstance(obj.get(key), dict) and any(isinstance(v, torch.Tensor) for v in obj[key].values()):
            return obj[key], meta
    return obj, meta


def _unreadable(path: Path, detail: str) -> CheckpointError:
    return CheckpointError(
        f"--checkpoint: {path} is not a readable PyTorch checkpoint ({detail}). It may be truncated or corrupt: "
        "copy it again or re-save it."
    )


def normalize_keys(raw: dict[str, Any], path: Path) -> dict[str, torch.Tensor]:
    """Strip DataParallel/DDP/compile prefixes and rename other public layouts to ours."""
    tensors = {k: v for k, v in raw.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"--checkpoint: {path} holds no tensors. Is it a model checkpoint?")
    for prefix in PREFIXES:
        if all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix):]: v for k, v in tensors.items()}
    out = {}
    for key, value in tensors.items():
        for pattern, repl in KEY_ALIASES:
            key = pattern.sub(repl, key)
        out[key] = value
    return out


def guess_layout(sd: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The arch, classes, channels and shortcut a state dict fits, read from its keys and shapes."""
    guess: dict[str, Any] = {}
    if "fc.weight" in sd:
        guess["num_classes"] = int(sd["fc.weight"].shape[0])
    if "conv1.weight" in sd and sd["conv1.weight"].ndim == 4:
        guess["in_channels"] = int(sd["conv1.weight"].shape[1])
        family = "imagenet" if sd["conv1.weight"].shape[-1] == 7 else "cifar"
        bottleneck = any(k.endswith(".conv3.weight") for k in sd)
        depths = []
        for stage in range(1, 5):
            blocks = {int(m.group(1)) for k in sd if (m := re.match(rf"layer{stage}\.(\d+)\.", k))}
            if blocks:
                depths.append(max(blocks) + 1)
        for name in list_archs():
            spec = get_arch(name)
            if spec.family == family and tuple(depths) == spec.layers and (spec.block == "bottleneck") == bottleneck:
                guess["arch"] = name
        guess["shortcut"] = "B" if any(".downsample." in k for k in sd) else "A"
    return guess


def _describe_mismatch(model: nn.Module, sd: dict[str, torch.Tensor]) -> str:
    own = model.state_dict()
    # Checkpoints from PyTorch < 0.4.1 have no num_batches_tracked; load_state_dict fills it in.
    missing = [k for k in own if k not in sd and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in sd and sd[k].shape != own[k].shape]
    parts = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("different shapes", shapes)):
        if items:
            more = f" and {len(items) - 5} more" if len(items) > 5 else ""
            parts.append(f"{label}: {', '.join(items[:5])}{more}")
    return "; ".join(parts)


def check_finite(sd: dict[str, torch.Tensor], path: str) -> None:
    bad = [k for k, v in sd.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(
            f"--checkpoint: {path} has NaN or Inf values in {len(bad)} tensor(s) (first: {bad[0]}). "
            "The training run diverged or the file is damaged: use an earlier checkpoint."
        )


def load_model(
    path: str | Path,
    *,
    arch: str | None = None,
    num_classes: int | None = None,
    in_channels: int | None = None,
) -> LoadedModel:
    """Build the architecture a checkpoint fits (or the one asked for) and load it strictly."""
    sd, meta = read_checkpoint(path)
    check_finite(sd, str(path))
    guess = {**guess_layout(sd), **{k: meta[k] for k in ("arch", "shortcut") if k in meta}}
    if arch is not None:
        arch = get_arch(arch).name  # unknown names fail here with the list of known ones
    arch = arch or guess.get("arch")
    if arch is None:
        raise CheckpointError(
            f"--checkpoint: could not tell which ResNet {path} holds (keys such as {', '.join(list(sd)[:4])}). "
            f"Pass --arch (one of {', '.join(list_archs())})."
        )
    nc = num_classes or guess.get("num_classes", 1000)
    ch = in_channels or guess.get("in_channels", 3)
    shortcut = guess.get("shortcut") if get_arch(arch).family == "cifar" else "B"
    try:
        model = build_model(arch, num_classes=nc, in_channels=ch, shortcut=shortcut)
    except ConfigError:
        raise
    problems = _describe_mismatch(model, sd)
    if problems:
        fit = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in guess.items() if k in ("arch", "num_classes"))
        hint = f" The checkpoint looks like {fit}." if fit else ""
        raise CheckpointError(
            f"--checkpoint: {path} does not fit {arch} with {nc} classes and {ch} input channel(s): {problems}."
            f"{hint} Pass the matching --arch/--num-classes, or check the file."
        )
    model.load_state_dict(sd, strict=True)
    model.eval()
    return LoadedModel(model, arch, nc, ch, shortcut or "B", str(path), meta)


def random_model(arch: str, *, num_classes: int, in_channels: int) -> LoadedModel:
    model = build_model(arch, num_classes=num_classes, in_channels=in_channels).eval()
    return LoadedModel(model, get_arch(arch).name, num_classes, in_channels, model.shortcut, "random-init")


def save_checkpoint(path: str | Path, model: nn.Module, meta: dict[str, Any], **extra: Any) -> None:
    """A .pt that ``torch.load(weights_only=True)`` reads: tensors, plain containers and our metadata."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, META_KEY: meta, **extra}, path)


def save_safetensors(path: str | Path, model: nn.Module, meta: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={META_KEY: json.dumps(meta, sort_keys=True)})


