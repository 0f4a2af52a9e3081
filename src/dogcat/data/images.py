"""Safe image decoding, the ``Item``/``Batch`` types, ``collate_items`` and the ``BadFiles`` reporter.

Bad files (empty, truncated, not an image) never raise from a dataset: the dataset returns an ``Item``
with ``image=None`` and the reason, ``collate_items`` drops it, and the main process reports it once
through ``BadFiles``. Datasets stay silent because they run in workers and again every epoch.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, get_worker_info
from torchvision.transforms.v2 import functional as TF

from ..config import DogcatError
from ..console import escape
from ..io import TEXT, disk_full_as, open_append
from ..reading import read_regular
from .jpeg import decode_jpeg_rgb, pil_draft, resize_like_full

# Extensions PIL decodes that people keep photos in; matched case-insensitively.
IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})


# Between its limit and twice that PIL only warns; dogcat refuses such a file itself (a bad file, reported
# once, like any other), so PIL's warning would only say it twice.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def max_pixels() -> int:
    """The most pixels an image may have: PIL's ``Image.MAX_IMAGE_PIXELS`` (89,478,485 by default, e.g.
    9459 x 9459). A larger file, whatever its format, is a bad file: a few KB of PNG or TIFF can ask for
    gigabytes ("decompression bomb"). Raise the limit by setting ``PIL.Image.MAX_IMAGE_PIXELS``."""
    return int(Image.MAX_IMAGE_PIXELS or 1 << 62)


def max_image_bytes() -> int:
    """The largest image file read: 4 bytes per allowed pixel (:func:`max_pixels`) plus 1 MiB of headers and
    metadata (342 MiB by default), room for an uncompressed RGBA picture of the largest size. A larger file (say
    a 4 GB sparse ``x.jpg``) is a bad file "too large" before a byte of it is read; the limit follows
    ``PIL.Image.MAX_IMAGE_PIXELS``."""
    return 4 * max_pixels() + (1 << 20)


def read_image_file(path: str | Path) -> tuple[bytes | None, str | None]:
    """The bytes of an image file, or ``(None, reason)``: missing, empty, not a regular file (a FIFO named
    ``x.jpg`` must not hang us, nor ``/dev/zero`` fill the memory), or larger than :func:`max_image_bytes`."""
    try:
        data = read_regular(path, max_image_bytes())
    except FileNotFoundError:
        return None, "missing file"
    except (OSError, ValueError) as e:
        if isinstance(e, ValueError) and str(e).startswith("not a regular file (a folder)"):
            return None, "is a folder, not a file"
        return None, f"{e}" if isinstance(e, ValueError) else f"unreadable: {type(e).__name__}: {e.strerror or e}"
    return (data, None) if data else (None, "empty file")


class DataError(DogcatError, ValueError):
    """A user-facing problem with the data; the message says what is wrong and how to fix it."""


class BadImageWarning(UserWarning):
    """An image file could not be decoded and is skipped (filter this category to silence it)."""


class Item(NamedTuple):
    """One sample, as every dataset's ``__getitem__`` returns it."""

    image: torch.Tensor | None  # float CHW, normalised; None when the file could not be decoded
    label: int  # class index; -1 when unknown
    id: str
    path: str
    error: str | None  # why decoding failed, else None


class Batch(NamedTuple):
    """A collated batch; ``images`` has 0 rows (shape (0, 0, 0, 0)) when every item was bad."""

    images: torch.Tensor
    labels: torch.Tensor
    ids: list[str]
    bad: list[tuple[str, str]]
    seed: int = 0  # seeds DataBundle.batch_transform: a function of (seed, epoch, position) from the sampler


def is_image_file(path: str | Path) -> bool:
    return os.path.splitext(str(path))[1].lower() in IMAGE_EXTS


def decode_image(path: str | Path, mode: str = "RGB", min_short: int = 0) -> tuple[torch.Tensor | None, str | None]:
    """Decode a file to a uint8 CHW tensor in ``mode`` ("RGB" or "L"); on failure ``(None, reason)``.

    ``min_short`` > 0 lets a JPEG at least twice that size decode at 1/2, 1/4 or 1/8 (in the DCT domain, far
    cheaper than decoding everything) and come back resized to short side ``min_short``, as ``v2.Resize``
    would make it from the full picture: pass what the transform resizes the short side to. RGB JPEGs go
    through simplejpeg; everything else, and any JPEG it refuses, through PIL. PIL sniffs the content, so a
    PNG named ``.jpg`` works. ``LOAD_TRUNCATED_IMAGES`` keeps its default (False) so that ``load()`` raises
    on a truncated file instead of returning a half-grey picture. Only a regular file of at most
    :func:`max_image_bytes` is read (:func:`read_image_file`).
    """
    data, error = read_image_file(path)
    if data is None:
        return None, error
    return decode_bytes(data, mode, min_short)


def decode_bytes(data: bytes, mode: str = "RGB", min_short: int = 0) -> tuple[torch.Tensor | None, str | None]:
    """:func:`decode_image` of a file's bytes."""
    try:
        if mode == "RGB":  # "L" stays with PIL: its RGB->L weights differ from the JPEG's own Y channel
            fast = decode_jpeg_rgb(data, min_short)
            if fast is not None:
                return fast, None
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if w * h > max_pixels():  # PIL itself only warns up to twice its limit
                return None, f"too large: {w}x{h} pixels, more than the {max_pixels():,} allowed (a decompression bomb?)"
            factor = pil_draft(im, min_short)
            im.load()  # decode fully here, inside the try, so truncation surfaces now
            img = im.convert(mode)  # grayscale, CMYK, RGBA, palette -> RGB (or L)
            factor = 1 if im.size == (w, h) else factor  # PIL may decline a draft
    except UnidentifiedImageError:
        return None, "not an image: PIL cannot identify the file format"
    except Image.DecompressionBombError as e:
        return None, f"too large: {e}"
    except Exception as e:  # PIL plugins raise OSError, SyntaxError, ValueError, struct.error... on corrupt data
        msg = str(e)
        if "truncated" in msg.lower():
            return None, "truncated image"
        return None, f"corrupt image: {type(e).__name__}: {msg}"
    tensor = TF.pil_to_tensor(img)
    return (resize_like_full(tensor, h, w, factor, min_short) if factor > 1 else tensor), None


class ImageFiles(Dataset):
    """Image files with labels and ids; ``transform`` maps a uint8 CHW tensor to a float tensor."""

    def __init__(self, samples: Sequence[tuple[str, int]], ids: Sequence[str],
                 transform: Callable[[torch.Tensor], torch.Tensor], mode: str = "RGB", min_short: int = 0) -> None:
        if len(samples) != len(ids):
            raise ValueError("samples and ids differ in length")
        self.samples = [(str(p), int(y)) for p, y in samples]
        self.ids = list(ids)
        self.transform = transform
        self.mode = mode
        self.min_short = min_short  # see decode_image: the short side the transform resizes to

    @property
    def targets(self) -> list[int]:
        """Labels in order (for samplers that balance classes)."""
        return [y for _, y in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Item:
        path, label = self.samples[i]
        raw, error = decode_image(path, self.mode, self.min_short)
        if raw is None:
            return Item(None, label, self.ids[i], path, error)
        try:
            image = self.transform(raw)
        except Exception as e:  # a worker must not die on one odd image; report it like a bad file
            return Item(None, label, self.ids[i], path, f"transform failed: {type(e).__name__}: {e}")
        return Item(image, label, self.ids[i], path, None)


def shared_empty(shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """An empty tensor, in shared memory when called in a loader worker: the batch then crosses to the main
    process without the extra copy (and page faults) of moving it there afterwards, as default_collate does."""
    if get_worker_info() is None:
        return torch.empty(tuple(shape), dtype=dtype)
    numel = math.prod(shape)
    storage = torch.UntypedStorage._new_shared(numel * dtype.itemsize)
    return torch.empty(0, dtype=dtype).set_(storage).view(tuple(shape))


def collate_items(items: list[Item] | Batch) -> Batch:
    """Drop bad items (reported in ``Batch.bad``) and stack the rest; a dataset that cuts whole batches
    itself (``__getitems__`` returning a Batch) passes through."""
    if isinstance(items, Batch):
        return items
    good = [it for it in items if it.image is not None]
    bad = [(it.path, it.error or "unreadable") for it in items if it.image is None]
    if good:
        images = torch.stack([it.image for it in good], out=shared_empty((len(good), *good[0].image.shape),
                                                                         good[0].image.dtype))
    else:
        images = torch.empty(0, 0, 0, 0)
    labels = torch.tensor([it.label for it in good], dtype=torch.int64)
    return Batch(images, labels, [it.id for it in good], bad)


class BadFiles:
    """Collects bad files in the main process: warns once per file and appends ``path<TAB>reason`` lines.

    An existing file is read first, so a resumed run neither repeats lines nor warns again. Paths are written
    byte for byte (a name that is not UTF-8 too), except that control characters are escaped (``\\n``,
    ``\\t``, ``\\x1b``): a name holding a newline or a tab must not break the file's lines.
    """

    def __init__(self, path: Path | str | None) -> None:
        self.path = Path(path) if path is not None else None
        self._seen: dict[str, str] = {}
        if self.path is not None and self.path.is_file():
            for line in self.path.read_text(**TEXT).splitlines():
                p, _, reason = line.partition("\t")
                if p:
                    self._seen[p] = reason

    @property
    def count(self) -> int:
        """Distinct bad files seen."""
        return len(self._seen)

    @property
    def files(self) -> dict[str, str]:
        return dict(self._seen)

    def add(self, bad: list[tuple[str, str]]) -> None:
        new: list[tuple[str, str]] = []
        for path, reason in bad:
            line = escape(path, keep_bytes=True)  # how the file writes it (a name with a newline stays one line)
            if path in self._seen or line in self._seen:
                continue
            reason = escape(" ".join(str(reason).split()), keep_bytes=True)  # one line per file, no tabs
            self._seen[path] = reason
            new.append((line, reason))
            warnings.warn(f"skipping unreadable image {escape(path)}: {reason}", BadImageWarning, stacklevel=2)
        if new and self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with disk_full_as(self.path.parent, what=f"appending to {self.path.name}"), \
                    open_append(self.path, "list of bad files", **TEXT) as f:  # never through a link
                f.writelines(f"{p}\t{r}\n" for p, r in new)  # surrogateescape: non-UTF-8 names as they are
