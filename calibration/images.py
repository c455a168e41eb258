"""Opening one image file as untrusted input: regular files only, a pixel limit, bounded memory.

Every image the tool reads (calibration, evaluation, training, ``infer``) comes through here, so a
FIFO named ``x.jpg`` cannot hang a run and a decompression bomb is skipped and named like any
unreadable file instead of aborting it. Normal images decode exactly as Pillow decodes them.
"""

from __future__ import annotations

import math
import os
import stat
import warnings
from pathlib import Path

from PIL import Image

# Pillow's own decompression-bomb threshold (about 9459 x 9459 pixels): larger images are refused.
MAX_PIXELS = 89_478_485
# JPEGs above this many pixels (4096 x 4096) are decoded at 1/2, 1/4 or 1/8 scale by the JPEG decoder
# itself (Pillow's ``draft``), never below twice the side the model's resize needs: a 9000 x 9000
# photo then costs ~30 MB instead of ~240 MB. Smaller images are untouched.
REDUCE_ABOVE = 4096 * 4096


class UnreadableImage(ValueError):
    """The file is not a regular file, is over the pixel limit, or Pillow cannot decode it."""


def open_image(path: str | os.PathLike[str], *, min_side: int | None = None) -> Image.Image:
    """A loaded PIL image. ``min_side``: the shorter side the caller's resize needs (allows reduced
    decoding of huge JPEGs). Raises FileNotFoundError, or UnreadableImage with the cause in words."""
    p = Path(path)
    mode = os.stat(p).st_mode  # FileNotFoundError / PermissionError reach the caller as they are
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file (a pipe, socket or device)"
        raise UnreadableImage(f"{kind}")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(p)
        except (Image.DecompressionBombWarning, Image.DecompressionBombError):
            raise UnreadableImage(f"over the {MAX_PIXELS:,}-pixel limit") from None
        except (OSError, SyntaxError, ValueError) as err:  # PIL raises all three for broken files
            raise UnreadableImage(f"{err.__class__.__name__}: {err}") from None
    try:
        w, h = img.size
        if w * h > MAX_PIXELS:
            raise UnreadableImage(f"{w}x{h} is over the {MAX_PIXELS:,}-pixel limit")
        if min_side and w * h > REDUCE_ABOVE and img.format == "JPEG":
            scale = 2 * min_side / min(w, h)
            if scale < 1:
                img.draft(img.mode, (math.ceil(w * scale), math.ceil(h * scale)))
        img.load()
    except UnreadableImage:
        img.close()
        raise
    except MemoryError:
        img.close()
        raise UnreadableImage(f"{w}x{h} does not fit in memory") from None
    except Exception as err:
        img.close()
        raise UnreadableImage(f"{err.__class__.__name__}: {err}") from None
    return img
