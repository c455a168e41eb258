"""Class-name files and per-image ground truth: the ImageNet validation layouts people have.

A labels file (``--labels``) names the model's outputs in order, so reports and ``infer`` print names,
not folder names; ImageNet's synset words (``n01440764 tench, Tinca tinca``) also give each class's folder
id, so class folders map to outputs by id and a folder subset still evaluates. A ground-truth file
(``--ground-truth``) labels a flat folder of images: ``<file> <label>`` lines (Caffe's ``val.txt``) or
Kaggle's ``LOC_val_solution.csv``.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resnet_deploy.errors import DataError

# WordNet ids, as ImageNet's folders and synset files name classes: the first word of a line when it looks so.
_SYNSET = re.compile(r"^[a-z]\d{8}$")
_KAGGLE_HEADER = "imageid,predictionstring"
MAX_LABEL_FILE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class ClassLabels:
    """The model's class names in output order; ``ids`` (folder names, synset ids), one per name, when the
    file gives them."""

    names: tuple[str, ...]
    ids: tuple[str, ...] = ()
    origin: str = "--labels"

    def __len__(self) -> int:
        return len(self.names)

    def index(self, token: str) -> int | None:
        """The output index a ground-truth label means: an index, a class id or a class name."""
        if re.fullmatch(r"\d+", token):
            return int(token) if int(token) < len(self.names) else None
        for table in (self.ids, self.names):
            if token in table:
                return table.index(token)
        return None


def _text(path: Path, flag: str) -> str:
    try:
        if path.stat().st_size > MAX_LABEL_FILE_BYTES:
            raise DataError(f"{flag}: {path} is over {MAX_LABEL_FILE_BYTES // 2**20} MB: not a labels file.")
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"{flag}: {path} does not exist.") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{flag}: {path} cannot be read as UTF-8 text ({err.__class__.__name__}).") from None


def read_labels(path: Path, *, flag: str = "--labels") -> ClassLabels:
    """One class per line (``name``, ``<synset id> name``, or ``id<TAB>name``), or JSON: a list of names, or
    ``{"0": name}`` / ``{"0": [id, name]}`` (Keras' ``imagenet_class_index.json``)."""
    text = _text(path, flag)
    how = ("Give one class name per line in the model's output order (or `<synset id> name` lines such as "
           "ImageNet's LOC_synset_mapping.txt), or a JSON list of names.")
    if path.suffix.lower() == ".json":
        names, ids = _from_json(text, path, flag, how)
    else:
        lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
        tabbed = bool(lines) and all("\t" in line for line in lines)
        pairs = [line.split("\t", 1) if tabbed else line.split(None, 1) for line in lines]
        if tabbed or (lines and all(len(p) == 2 and _SYNSET.match(p[0]) for p in pairs)):
            ids, names = tuple(p[0].strip() for p in pairs), tuple(p[1].strip() for p in pairs)
        else:
            ids, names = (), tuple(lines)
    if not names:
        raise DataError(f"{flag}: {path} names no classes. {how}")
    for kind, values in (("class id", ids), ("class name", () if ids else names)):
        twice = [v for v, n in Counter(values).items() if n > 1]
        if twice:
            raise DataError(f"{flag}: {path} lists the {kind} {twice[0]!r} twice. {how}")
    return ClassLabels(names, ids, f"{flag} {path}")


def _from_json(text: str, path: Path, flag: str, how: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    try:
        data: Any = json.loads(text)
    except ValueError as err:
        raise DataError(f"{flag}: {path} is not valid JSON ({err}). {how}") from None
    if isinstance(data, list) and all(isinstance(v, str) for v in data):
        return tuple(data), ()
    if isinstance(data, dict) and all(re.fullmatch(r"\d+", str(k)) for k in data):
        keys = sorted(data, key=int)
        if [int(k) for k in keys] != list(range(len(keys))):
            raise DataError(f"{flag}: {path} must number its classes 0..{len(keys) - 1} without gaps. {how}")
        values = [data[k] for k in keys]
        if all(isinstance(v, str) for v in values):
            return tuple(values), ()
        if all(isinstance(v, list) and len(v) == 2 and all(isinstance(x, str) for x in v) for v in values):
            return tuple(v[1] for v in values), tuple(v[0] for v in values)
    raise DataError(f"{flag}: {path} is JSON of an unknown shape. {how}")


def read_ground_truth(path: Path, labels: ClassLabels | None, *, flag: str = "--ground-truth") -> dict[str, int]:
    """File name (or name without extension) -> output index, from ``<file> <label>`` lines (label: an index
    from 0, a class id or a class name of ``labels``) or Kaggle's ``LOC_val_solution.csv``."""
    lines = [line.strip() for line in _text(path, flag).splitlines() if line.strip() and not line.startswith("#")]
    if not lines:
        raise DataError(f"{flag}: {path} is empty.")
    kaggle = lines[0].replace(" ", "").lower().startswith(_KAGGLE_HEADER)
    if kaggle:
        rows = [(name, rest.split()[0] if rest.split() else "") for name, _, rest in
                (line.partition(",") for line in lines[1:])]
    else:
        split = [re.split(r"[,\s]+", line, maxsplit=1) for line in lines]
        if all(len(parts) == 1 for parts in split):
            raise DataError(
                f"{flag}: {path} holds one label per line and no file names, like the ImageNet devkit's "
                "ILSVRC2012_validation_ground_truth.txt, whose numbers follow the devkit's meta.mat and not the "
                "model's outputs. Give `<file> <label>` lines (Caffe's val.txt, labels 0-999 in sorted synset "
                "order) or Kaggle's LOC_val_solution.csv with --labels LOC_synset_mapping.txt.")
        rows = [(parts[0], parts[1].strip() if len(parts) > 1 else "") for parts in split]
    truth: dict[str, int] = {}
    for name, token in rows:
        index = labels.index(token) if labels is not None else (int(token) if token.isdigit() else None)
        if index is None:
            need = "" if labels is not None else " (class ids or names need --labels naming the classes)"
            raise DataError(f"{flag}: {path}: the label {token!r} of {name!r} is not a class of "
                            f"{labels.origin if labels else 'the model'}{need}. Labels are output indices from 0, "
                            "or the class ids/names of --labels.")
        truth[name] = index
    return truth
