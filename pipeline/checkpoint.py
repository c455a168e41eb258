"""Reading untrusted checkpoints safely and matching them to an architecture.

Only tensors and plain containers are ever deserialised: ``torch.load(weights_only=True)`` for
pickle-based files and safetensors otherwise. A checkpoint that needs arbitrary unpickling is refused.
"""

from __future__ import annotations

import json
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resnet_deploy.calibration.preprocess import Preprocessing
from resnet_deploy.errors import CheckpointError, ConfigError
from resnet_deploy.files import as_newly_created
from resnet_deploy.models import ArchSpec, build_model, get_arch, list_archs
from resnet_deploy.pipeline.loaded_model import LoadedModel

TORCH_SUFFIXES = (".pt", ".pth", ".th", ".tar", ".ckpt", ".bin")
NESTED_KEYS = ("state_dict", "model_state_dict", "model", "net", "ema", "model_ema")
PREFIXES = ("module.", "_orig_mod.", "model.", "net.")
# Other public layouts of the same networks, renamed to ours (CIFAR checkpoints call fc "linear").
KEY_ALIASES = ((re.compile(r"^linear\."), "fc."), (re.compile(r"\.shortcut\.(\d)\."), r".downsample.\1."))
META_KEY = "resnet_deploy"


def read_checkpoint(path: str | Path, *, flag: str = "--checkpoint") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict with our key names, metadata) from a .pt/.pth/.th/.tar or .safetensors file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{flag}: {path} does not exist or is not a file. Check the path.")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        raw, meta = _read_safetensors(path, flag)
    elif suffix in TORCH_SUFFIXES:
        raw, meta = _read_torch(path, flag)
    else:
        raise CheckpointError(
            f"{flag}: {path} has suffix {path.suffix!r}; give a PyTorch file "
            f"({', '.join(TORCH_SUFFIXES)}) or a .safetensors file."
        )
    return normalize_keys(raw, path, flag=flag), _check_meta(meta, path, flag)


def _check_meta(meta: Any, path: Path, flag: str) -> dict[str, Any]:
    """Our metadata block of a checkpoint, type- and range-checked: it is untrusted input like the
    weights, and a bad value in it must be blamed on the checkpoint, not on a flag never passed."""
    where = f"{flag} {path}: its {META_KEY!r} metadata"
    if not isinstance(meta, dict):
        raise CheckpointError(f"{where} is a {type(meta).__name__}, not an object. Re-save the checkpoint with "
                              "`resnet-deploy train`, or save only the weights (then pass the flags).")
    if "arch" in meta and (not isinstance(meta["arch"], str) or meta["arch"].lower() not in list_archs()):
        raise CheckpointError(f"{where} names architecture {meta['arch']!r}, which is unknown (known: "
                              f"{', '.join(list_archs())}). Save only the weights and pass --arch.")
    if "shortcut" in meta and meta["shortcut"] not in ("A", "B"):
        raise CheckpointError(f"{where} has shortcut {meta['shortcut']!r}; it must be 'A' or 'B'.")
    if "preprocessing" in meta and meta["preprocessing"] is not None:
        try:
            Preprocessing.from_dict(meta["preprocessing"], origin=f"{where}: preprocessing")
        except ConfigError as err:
            raise CheckpointError(f"{err} Re-save the checkpoint with correct metadata, or save only the weights "
                                  "and pass --input-size, --mean and --std.") from None
    return meta


def _read_safetensors(path: Path, flag: str) -> tuple[dict[str, Any], dict[str, Any]]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        tensors = load_file(str(path))
        meta = json.loads(header[META_KEY]) if META_KEY in header else {}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{flag}: {path} is not a readable safetensors file ({err}).") from None
    return tensors, meta


def _read_torch(path: Path, flag: str) -> tuple[dict[str, Any], dict[str, Any]]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # Only a refused GLOBAL means Python objects; garbage bytes fail here too ("Unsupported operand").
        lines = [line.strip() for line in str(err).splitlines()]
        refused = [line for line in lines if "GLOBAL" in line]
        if not refused:
            what = next((line for line in lines if line.startswith("Unsupported")), "invalid pickle data")
            raise _unreadable(path, f"UnpicklingError: {what}", flag) from None
        raise CheckpointError(
            f"{flag}: {path} holds pickled Python objects besides tensors ({refused[0][:200]}). Checkpoints "
            "are untrusted input, so resnet-deploy never unpickles arbitrary objects. Re-save only the weights: "
            "torch.save(model.state_dict(), 'weights.pt') or safetensors.torch.save_file(...)."
        ) from None
    except Exception as err:
        first = str(err).splitlines()[0][:160] if str(err) else "corrupt"
        raise _unreadable(path, f"{err.__class__.__name__}: {first}", flag) from None
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"{flag}: {path} holds a {type(obj).__name__}, not a state dict. Save model.state_dict()."
        )
    meta = obj.get(META_KEY, {})
    for key in NESTED_KEYS:
        if isinstance(obj.get(key), dict) and any(isinstance(v, torch.Tensor) for v in obj[key].values()):
            return obj[key], meta
    return obj, meta


def _unreadable(path: Path, detail: str, flag: str) -> CheckpointError:
    return CheckpointError(
        f"{flag}: {path} is not a readable PyTorch checkpoint ({detail}). It may be truncated or corrupt: "
        "copy it again or re-save it."
    )


def normalize_keys(raw: dict[str, Any], path: Path, *, flag: str = "--checkpoint") -> dict[str, torch.Tensor]:
    """Strip DataParallel/DDP/compile prefixes and rename other public layouts to ours."""
    tensors = {k: v for k, v in raw.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{flag}: {path} holds no tensors. Is it a model checkpoint?")
    for prefix in PREFIXES:
        if all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix):]: v for k, v in tensors.items()}
    out = {}
    for key, value in tensors.items():
        for pattern, repl in KEY_ALIASES:
            key = pattern.sub(repl, key)
        out[key] = value
    return out


@dataclass(frozen=True)
class ArchFeatures:
    """What a state dict shows of its architecture; ``None`` where its weights cannot tell."""

    stem: str | None  # "default" (7x7 conv1), "deep" (conv1.0/3/6), "cifar" (3x3 conv1)
    block: str  # "basic" | "bottleneck"
    layers: tuple[int, ...]  # blocks per stage
    groups: int | None  # of the 3x3 in the first block: its out channels / in channels per group
    width_per_group: int | None
    se: bool
    downsample: str | None  # "conv", "avg" (downsample.0 is a parameter-free pool), None: no projection

    def differences(self, spec: ArchSpec) -> list[str]:
        """The fields in which ``spec`` differs from these features; empty when it fits."""
        fields = ("stem", "block", "layers", "groups", "width_per_group", "se", "downsample")
        return [f for f in fields if getattr(self, f) is not None and getattr(self, f) != getattr(spec, f)]

    def describe(self) -> str:
        parts = [f"{self.block} blocks {list(self.layers)}", f"stem {self.stem or 'unknown'}"]
        if self.groups is not None:
            parts.append(f"groups {self.groups} x width {self.width_per_group}")
        parts += [f"SE {'yes' if self.se else 'no'}", f"downsample {self.downsample or 'none'}"]
        return ", ".join(parts)


def read_features(sd: dict[str, torch.Tensor]) -> ArchFeatures | None:
    """The architecture features of a state dict with our key names; None when it has no ResNet stem."""
    if "conv1.0.weight" in sd:
        stem: str | None = "deep"
    elif "conv1.weight" in sd and sd["conv1.weight"].ndim == 4:
        stem = {7: "default", 3: "cifar"}.get(int(sd["conv1.weight"].shape[-1]))
    else:
        return None
    bottleneck = any(k.endswith(".conv3.weight") for k in sd)
    blocks: dict[int, set[int]] = {}
    for key in sd:
        if m := re.match(r"layer(\d+)\.(\d+)\.", key):
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    layers = tuple(max(blocks[s]) + 1 for s in sorted(blocks))
    groups = width = None
    conv2 = sd.get("layer1.0.conv2.weight")
    if conv2 is not None and conv2.ndim == 4 and conv2.shape[1] > 0:
        groups = int(conv2.shape[0]) // int(conv2.shape[1])
        width = 64
        conv3 = sd.get("layer1.0.conv3.weight")
        if bottleneck and conv3 is not None and groups > 0:
            # Invert torchvision's width = int(planes * width_per_group / 64) * groups, planes = out / 4.
            width = int(conv2.shape[0]) // groups * 64 * 4 // int(conv3.shape[0])
    downsample = None
    if any(".downsample.0.weight" in k for k in sd):
        downsample = "conv"
    elif any(k.endswith(".downsample.1.weight") and sd[k].ndim == 4 for k in sd):
        downsample = "avg"
    se = any(".se.fc1." in k for k in sd)
    return ArchFeatures(stem, "bottleneck" if bottleneck else "basic", layers, groups, width, se, downsample)


def matching_archs(features: ArchFeatures) -> list[str]:
    return [name for name in list_archs() if not features.differences(get_arch(name))]


def guess_layout(sd: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The arch, classes, channels and shortcut a state dict fits, read from its keys and shapes.

    The arch is set only when exactly one registered architecture fits; ``unknown_arch_error``
    explains the other cases.
    """
    guess: dict[str, Any] = {}
    if "fc.weight" in sd:
        guess["num_classes"] = int(sd["fc.weight"].shape[0])
    stem_weight = sd.get("conv1.weight", sd.get("conv1.0.weight"))
    if stem_weight is not None and stem_weight.ndim == 4:
        guess["in_channels"] = int(stem_weight.shape[1])
        features = read_features(sd)
        matches = matching_archs(features) if features is not None else []
        if len(matches) == 1:
            guess["arch"] = matches[0]
        guess["shortcut"] = "B" if any(".downsample." in k for k in sd) else "A"
    return guess


def unknown_arch_error(path: str | Path, sd: dict[str, torch.Tensor], *, flag: str = "--checkpoint") -> CheckpointError:
    """Why no single architecture fits ``sd``, naming the candidates."""
    features = read_features(sd)
    if features is None:
        return CheckpointError(
            f"{flag}: could not tell which ResNet {path} holds (keys such as {', '.join(list(sd)[:4])}). "
            f"Pass --arch (one of {', '.join(list_archs())})."
        )
    matches = matching_archs(features)
    if len(matches) > 1:
        return CheckpointError(
            f"{flag}: {path} fits more than one architecture ({features.describe()}): candidates "
            f"{', '.join(matches)}. Pass --arch with the one it was trained as."
        )
    diffs = {name: features.differences(get_arch(name)) for name in list_archs()}
    fewest = min(len(d) for d in diffs.values())
    nearest = [f"{name} (differs in {', '.join(d)})" for name, d in diffs.items() if len(d) == fewest]
    return CheckpointError(
        f"{flag}: {path} holds a ResNet that no known architecture matches ({features.describe()}). "
        f"Nearest candidates: {'; '.join(nearest)}. `resnet-deploy archs` lists every architecture; "
        "pass --arch if one of them is meant."
    )


def _describe_mismatch(model: nn.Module, sd: dict[str, torch.Tensor]) -> str:
    own = model.state_dict()
    # Checkpoints from PyTorch < 0.4.1 have no num_batches_tracked; load_state_dict fills it in.
    missing = [k for k in own if k not in sd and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}"
              for k in own if k in sd and sd[k].shape != own[k].shape]
    parts = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("different shapes", shapes)):
        if items:
            more = f" and {len(items) - 5} more" if len(items) > 5 else ""
            parts.append(f"{label}: {', '.join(items[:5])}{more}")
    return "; ".join(parts)


def check_finite(sd: dict[str, torch.Tensor], path: str, *, flag: str = "--checkpoint") -> None:
    bad = [k for k, v in sd.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(
            f"{flag}: {path} has NaN or Inf values in {len(bad)} tensor(s) (first: {bad[0]}). "
            "The training run diverged or the file is damaged: use an earlier checkpoint."
        )


def load_model(
    path: str | Path,
    *,
    arch: str | None = None,
    num_classes: int | None = None,
    in_channels: int | None = None,
    flag: str = "--checkpoint",
    fit_flags: tuple[str, ...] = ("arch", "num_classes"),
) -> LoadedModel:
    """Build the architecture a checkpoint fits (or the one asked for) and load it strictly; errors name ``flag``
    and, on a mismatch, the checkpoint's values of the caller's ``fit_flags`` (train has no --num-classes)."""
    sd, meta = read_checkpoint(path, flag=flag)
    check_finite(sd, str(path), flag=flag)
    guess: dict[str, Any] = {**guess_layout(sd), **{k: meta[k] for k in ("arch", "shortcut") if k in meta}}
    if arch is not None:
        arch = get_arch(arch).name  # unknown names fail here with the list of known ones
    arch = arch or guess.get("arch")
    if arch is None:
        raise unknown_arch_error(path, sd, flag=flag)
    nc = num_classes or guess.get("num_classes", 1000)
    ch = in_channels or guess.get("in_channels", 3)
    shortcut = guess.get("shortcut") if get_arch(arch).family == "cifar" else "B"
    try:
        model = build_model(arch, num_classes=nc, in_channels=ch, shortcut=shortcut)
    except ConfigError:
        raise
    problems = _describe_mismatch(model, sd)
    if problems:
        fit = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in guess.items() if k in fit_flags)
        hint = f" The checkpoint looks like {fit}." if fit else ""
        flags = "/".join(f"--{k.replace('_', '-')}" for k in fit_flags)
        raise CheckpointError(
            f"{flag}: {path} does not fit {arch} with {nc} classes and {ch} input channel(s): {problems}."
            f"{hint} Pass the matching {flags}, or check the file."
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
    as_newly_created(Path(path))  # save_file makes it 0600; last.pt beside it is 0644


