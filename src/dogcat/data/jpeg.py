"""Fast JPEG decoding: simplejpeg (libjpeg-turbo without PIL's per-image overhead) with DCT-domain downscaling.

Measured on bench/data.py's 300-500 px JPEGs (one core, file read included, ms per image): PIL 1.20,
``torchvision.io.decode_jpeg`` 0.72, simplejpeg 0.59 (the same pixels as PIL: both are libjpeg-turbo), OpenCV
0.63 (1.19 against simplejpeg's 1.36 on noisier pictures). Scaled decoding (libjpeg's M/8 IDCT) pays only
at power-of-2 factors: on a 1600x1200 file, 1/2 took 6.2 ms against 7.7 ms at full size, while 3/4 took
9.7 ms. So :func:`draft_factor` only picks 2, 4 or 8.

A downscaled decode is ceil(h/f) x ceil(w/f): its last row and column stand for a partial block, so resizing
it to a fixed size stretches the picture by up to a pixel, which moved eval outputs by 4-9/255 on average.
:func:`resize_like_full` resizes it with the full picture's geometry instead; then it differs from resizing
the full decode by 0.6-1.8/255 on average, as much as bicubic differs from bilinear there (0.5-1.9).

Anything this module does not handle (PNG, CMYK, truncated or corrupt data, huge files) returns None and the
caller falls back to PIL, which gives the reason a bad file is reported with.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms.v2 import functional as TF

try:  # optional at import time: without it every file goes through PIL
    import simplejpeg
except ImportError:  # pragma: no cover - a dependency in pyproject.toml
    simplejpeg = None

JPEG_MAGIC = b"\xff\xd8\xff"


def draft_factor(short_side: int, min_short: int) -> int:
    """Largest of 1, 2, 4, 8 that keeps the short side at least ``min_short`` (0: no downscaling)."""
    factor = 1
    while min_short > 0 and factor < 8 and short_side // (factor * 2) >= min_short:
        factor *= 2
    return factor


def resize_like_full(img: torch.Tensor, h: int, w: int, factor: int, short: int) -> torch.Tensor:
    """``img``, the h x w picture decoded at 1/``factor``, resized to what ``v2.Resize(short)`` makes of the
    full picture: the same output size, and pixel centres at the same places (explicit scales, so that the
    partial last DCT block is not stretched over a whole pixel)."""
    oh, ow = (int(short * h / w), short) if w <= h else (short, int(short * w / h))  # as torchvision rounds
    scales = (oh * factor / h + 1e-9, ow * factor / w + 1e-9)  # + 1e-9: floor(size * scale) must give oh, ow
    out = F.interpolate(img[None], scale_factor=scales, mode="bilinear", antialias=True, align_corners=False,
                        recompute_scale_factor=False)[0]
    return out if out.shape[-2:] == (oh, ow) else TF.resize(img, [oh, ow], antialias=True)


def decode_jpeg_rgb(data: bytes | str | Path, min_short: int = 0) -> torch.Tensor | None:
    """A plain JPEG (its bytes, or a path) as a uint8 CHW RGB tensor (an HWC buffer viewed CHW: torchvision's
    uint8 resize is fastest on that layout); when its short side is at least twice ``min_short``, decoded at
    1/2, 1/4 or 1/8 in the DCT domain and resized to short side ``min_short`` (:func:`resize_like_full`). None
    when the file is no JPEG that simplejpeg decodes cleanly: the caller then asks PIL."""
    if simplejpeg is None:
        return None
    if not isinstance(data, bytes):
        with open(data, "rb") as f:
            data = f.read()
    if not data.startswith(JPEG_MAGIC):
        return None
    try:
        h, w, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        if colorspace not in ("YCbCr", "Gray") or h * w > (Image.MAX_IMAGE_PIXELS or 1 << 62):
            return None  # CMYK/YCCK: PIL's conversion; too large: PIL's DecompressionBombError
        factor = draft_factor(min(h, w), min_short)
        kw = {"min_height": -(-h // factor), "min_width": -(-w // factor)} if factor > 1 else {}
        arr = simplejpeg.decode_jpeg(data, "RGB", strict=True, **kw)  # strict: truncation raises
    except Exception:  # corrupt or truncated: PIL decides what to call it
        return None
    img = torch.from_numpy(arr).permute(2, 0, 1)
    return resize_like_full(img, h, w, factor, min_short) if factor > 1 else img


def pil_draft(im: Image.Image, min_short: int) -> int:
    """Ask PIL's JPEG decoder for a DCT-domain downscale by 2, 4 or 8 keeping the short side >= ``min_short``;
    returns the factor (1: none) for :func:`resize_like_full`."""
    if im.format != "JPEG" or min_short <= 0:
        return 1
    w, h = im.size
    factor = draft_factor(min(w, h), min_short)
    if factor > 1:
        im.draft(None, (w // factor, h // factor))
    return factor
