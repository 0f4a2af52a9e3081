"""Packed cache: every image decoded once, stored as uint8 in one memory-mapped file, then read by index.

Layout, under ``<data root>/.dogcat-cache/`` (``~/.cache/dogcat/packed/`` when the data root is read-only;
``--cache-dir`` overrides both)::

    <source>-s<S>c<C>-<fingerprint>/
        pixels.u8      N x S x S x 3 uint8 (HWC): the good files in sorted path order
        index.json     format version, source, S, C, fingerprint, files (relative path per row), bad files
        bad_files.txt  path<TAB>reason of the files that could not be decoded, as a run's bad_files.txt
        COMPLETE       written last

Each image is resized (short side S, antialiased) and centre-cropped to S x S, S = round(C / 0.875) for
the network input C: exactly what the eval transform's resize produces, so eval from the cache (a C x C
crop) equals eval from the files. Training crops its random resized crop from the S x S square, not from
the whole picture (the corners of a wide photo are gone). The fingerprint hashes the sorted relative paths
with their sizes, mtimes and labels: a changed, added or removed file gives a new cache (the stale one is
deleted). A build writes into ``.tmp-<pid>-<name>`` and renames the folder when complete, so an interrupted
build is never taken for a whole one. One process builds a given cache, holding ``.<name>.lock``; others
(DDP ranks, other jobs) wait on that lock and then use it. Clean-up deletes only folders named as ours.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import re
import signal
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

from ..console import escape, progress_bar  # a widget in a notebook (with ipywidgets), a bar on a terminal
from ..io import TEXT, disk_full_as, ensure_free, read_small
from ..locks import FileLock, LockHeld, describe_holder
from .arrays import ArrayImages, Prepare
from .images import DataError, decode_image

log = logging.getLogger("dogcat")
VERSION = 1
FALLBACK_ROOT = Path("~/.cache/dogcat/packed")
Samples = Sequence[tuple[str, int]]
NAME = re.compile(r".+-[0-9a-f]{8}-s\d+c\d+-[0-9a-f]{16}")  # <source>-<path hash>-s<S>c<C>-<fingerprint>


@dataclass
class Packed:
    """A complete cache: ``pixels`` (N, S, S, 3) uint8, a memmap or (``load``) a tensor in RAM."""

    path: Path
    size: int
    crop: int
    base: Path  # the folder relative paths start from
    rows: dict[str, int]  # relative path -> row
    bad: dict[str, str]  # relative path -> reason
    pixels: np.ndarray | torch.Tensor = field(repr=False)

    @property
    def nbytes(self) -> int:
        return len(self.rows) * self.size * self.size * 3

    def rel(self, path: str) -> str:
        return os.path.relpath(os.path.abspath(path), self.base)

    def row(self, path: str) -> int:
        """The row of ``path``, or -1 for a file that could not be decoded."""
        return self.rows.get(self.rel(path), -1)

    def reason(self, path: str) -> str:
        return self.bad.get(self.rel(path), "not in the cache")

    def load(self, budget_mb: float) -> Packed:
        """Read the whole file into RAM when it fits ``budget_mb``: no page faults or disk reads later."""
        if isinstance(self.pixels, np.memmap) and 0 < self.nbytes <= budget_mb * 2**20:
            self.pixels = torch.from_numpy(np.fromfile(self.path / "pixels.u8", np.uint8)).view(self.pixels.shape)
        return self


def fingerprint(samples: Samples, base: Path) -> str:
    """sha256 of the sorted (relative path, size, mtime, label) of the files: any change gives a new one."""
    lines = []
    for path, label in samples:
        try:
            st = os.stat(path)
            stat = f"{st.st_size}\t{st.st_mtime_ns}"
        except OSError:
            stat = "missing"  # stays bad in the cache; appearing later changes the fingerprint
        lines.append(f"{os.path.relpath(os.path.abspath(path), base)}\t{stat}\t{label}")
    return hashlib.sha256("\n".join(sorted(lines)).encode(**TEXT)).hexdigest()


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        return os.access(folder, os.W_OK)
    except OSError:
        return False


def candidate_roots(base: Path, cache_dir: str | None) -> list[Path]:
    """Where caches of files under ``base`` may live, in order of preference."""
    if cache_dir:
        return [Path(cache_dir).expanduser()]
    return [base / ".dogcat-cache", FALLBACK_ROOT.expanduser()]


def _index(meta: object) -> tuple[int, int, int, list[str], dict[str, str], str] | None:
    """``(n, size, crop, files, bad, base)`` of an index.json of the right shape, else None."""
    if not isinstance(meta, dict) or meta.get("version") != VERSION:
        return None
    files, bad, size, crop, base = (meta.get(k) for k in ("files", "bad", "size", "crop", "base"))
    if not (isinstance(files, list) and all(isinstance(f, str) for f in files) and isinstance(bad, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in bad.items())
            and isinstance(size, int) and 0 < size <= 1 << 16 and isinstance(crop, int) and isinstance(base, str)):
        return None
    return len(files), size, crop, files, bad, base


def open_packed(folder: Path, warn: bool = True) -> Packed | None:
    """The cache in ``folder``, or None when it is missing, incomplete or of another format version. A
    complete one whose index is damaged is reported (one warning naming it) and then rebuilt like a stale one."""
    try:
        if not (folder / "COMPLETE").is_file():
            return None
        index = _index(json.loads(read_small(folder / "index.json", 1 << 30).decode("utf-8")))
        if index is None:
            raise ValueError("not the index of this dogcat version")
        n, s, crop, files, bad, base = index
        if (folder / "pixels.u8").stat().st_size != n * s * s * 3:
            raise ValueError("pixels.u8 is not the size its index says")
    except (OSError, ValueError, RecursionError) as e:  # RecursionError: JSON nested too deep for the parser
        if warn:
            warnings.warn(f"packed cache {folder} is damaged ({type(e).__name__}: {' '.join(str(e).split())[:200]}); "
                          "it will be rebuilt")
        return None
    shape = (n, s, s, 3)
    # mode "c" (copy-on-write) only so that torch.from_numpy takes views without a read-only warning; nothing writes
    pixels = np.memmap(folder / "pixels.u8", np.uint8, "c", shape=shape) if n else np.zeros(shape, np.uint8)
    return Packed(folder, s, crop, Path(base), {f: i for i, f in enumerate(files)}, dict(bad), pixels)


def _init_worker() -> None:
    torch.set_num_threads(1)  # one process per core; threads inside would fight over the same cores
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the parent stops the pool and cleans up


def _decode(job: tuple[str, int, int]) -> tuple[bytes | None, str | None]:
    """One file -> S x S x 3 bytes, or (None, reason) as ``decode_image`` reports it."""
    path, size, crop = job
    raw, error = decode_image(path, "RGB", min_short=size)
    if raw is None:
        return None, error
    try:
        img = TF.resize(raw, [size], antialias=True)  # exactly the eval transform's resize
        h, w = img.shape[-2:]
        # place the window so that its own centre crop (offset (S - C) // 2) is v2.CenterCrop(C) of the image
        top = min(max(int(round((h - crop) / 2.0)) - (size - crop) // 2, 0), h - size)
        left = min(max(int(round((w - crop) / 2.0)) - (size - crop) // 2, 0), w - size)
        img = img[:, top:top + size, left:left + size]
        return img.permute(1, 2, 0).contiguous().numpy().tobytes(), None
    except Exception as e:  # as ImageFiles does: an odd image is reported, never fatal
        return None, f"transform failed: {type(e).__name__}: {e}"


def _results(jobs: list[tuple[str, int, int]], workers: int) -> Iterable[tuple[bytes | None, str | None]]:
    if workers <= 1 or len(jobs) < 64:  # a pool costs more than it saves on a handful of files
        yield from map(_decode, jobs)
        return
    with multiprocessing.get_context().Pool(workers, initializer=_init_worker) as pool:
        yield from pool.imap(_decode, jobs, chunksize=16)  # in order: rows follow the sorted paths


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


TEMP = re.compile(r"\.tmp-\d+-(?P<name>.+)")


def _lock(root: Path, name: str) -> FileLock:
    """The lock a builder of cache ``name`` holds while it builds (``root/.<name>.lock``)."""
    return FileLock(root / f".{name}.lock")


def _clean(root: Path, prefix: str, keep: str) -> None:
    """Delete stale caches of the same files and size (``<prefix><16 hex>``), and temp folders of builds that
    died (``.tmp-<pid>-<cache name>`` whose build lock nobody holds). Nothing else under ``root`` is touched:
    with ``--cache-dir=~`` the folder is not ours. A lock we cannot open or take counts as held."""
    stale_name = re.compile(re.escape(prefix) + r"[0-9a-f]{16}")
    for d in root.iterdir() if root.is_dir() else []:
        if d.is_symlink() or not d.is_dir():
            continue
        if stale_name.fullmatch(d.name) and d.name != keep:
            shutil.rmtree(d, ignore_errors=True)
            continue
        m = TEMP.fullmatch(d.name)
        if not m or not NAME.fullmatch(m["name"]):
            continue
        if m["name"] == keep:  # our own name: we hold its lock, our temp folder is already renamed
            shutil.rmtree(d, ignore_errors=True)
            continue
        lock = _lock(root, m["name"])
        try:
            lock.acquire()
        except (LockHeld, OSError):
            continue  # a builder is at work (PermissionError included: another user's, alive as far as we know)
        try:
            shutil.rmtree(d, ignore_errors=True)
        finally:
            lock.release(remove=True)


def build(samples: Samples, base: Path, folder: Path, size: int, crop: int, fp: str, workers: int = -1,
          progress: bool = True) -> Packed:
    """Decode ``samples`` in parallel into ``folder`` (through a temp folder renamed at the end). The space
    it needs is known up front and checked first; a disk that fills anyway is a DiskFull, the temp removed."""
    order = sorted(range(len(samples)), key=lambda i: os.path.relpath(os.path.abspath(samples[i][0]), base))
    jobs = [(str(samples[i][0]), size, crop) for i in order]
    need = len(jobs) * size * size * 3 + 64 * len(jobs) + (1 << 16)  # pixels + index
    with disk_full_as(folder.parent, need, f"building the packed cache {folder.name}"):
        ensure_free(folder.parent, need, f"building the packed cache {folder.name}")
        return _build(jobs, base, folder, size, crop, fp, workers, progress)


def _build(jobs: list[tuple[str, int, int]], base: Path, folder: Path, size: int, crop: int, fp: str, workers: int,
           progress: bool) -> Packed:
    tmp = folder.parent / f".tmp-{os.getpid()}-{folder.name}"
    shutil.rmtree(tmp, ignore_errors=True)  # a dead builder's with our pid: ours to remove, we hold the lock
    tmp.mkdir(parents=True)
    try:
        files, bad = [], {}
        bar = progress_bar()(total=len(jobs), desc=f"caching {base.name or base} at {size}px", unit="img",
                   disable=None if progress else True)
        with open(tmp / "pixels.u8", "wb") as f:
            procs = (os.cpu_count() or 1) if workers < 0 else workers  # -1: every core, the build has them all
            for (path, _, _), (data, error) in zip(jobs, _results(jobs, procs)):
                rel = os.path.relpath(os.path.abspath(path), base)
                if data is None:
                    bad[rel] = error or "unreadable"
                else:
                    f.write(data)
                    files.append(rel)
                bar.update()
            f.flush()
            os.fsync(f.fileno())
        bar.close()
        meta = {"version": VERSION, "size": size, "crop": crop, "fingerprint": fp, "base": str(base),
                "built": time.strftime("%Y-%m-%dT%H:%M:%S"), "files": files, "bad": bad}
        (tmp / "index.json").write_text(json.dumps(meta))  # ASCII: json escapes non-UTF-8 names
        lines = (f"{escape(base / p, keep_bytes=True)}\t{escape(r, keep_bytes=True)}\n" for p, r in bad.items())
        (tmp / "bad_files.txt").write_text("".join(lines), **TEXT)  # one line a file: control characters escaped
        _fsync(tmp / "index.json")
        (tmp / "COMPLETE").write_text(f"{len(files)} images, {len(bad)} bad\n")
        _fsync(tmp)
        try:
            os.rename(tmp, folder)
        except OSError:  # another process finished the same cache first: use theirs
            if open_packed(folder, warn=False) is None:
                shutil.rmtree(folder, ignore_errors=True)
                os.rename(tmp, folder)
        _fsync(folder.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    packed = open_packed(folder)
    assert packed is not None, f"cache {folder} unreadable right after its build"
    return packed


def ensure(samples: Samples, source: str | Path, size: int, crop: int, cache_dir: str | None = None,
           workers: int = -1, progress: bool = True) -> Packed:
    """The complete cache of ``samples`` at S = ``size``, built first when missing or stale.

    ``source`` is the data folder or list file the samples came from: the cache lives next to it and is
    named after it, so that two lists in one folder keep two caches."""
    source = Path(source).expanduser().resolve()
    base = source if source.is_dir() else source.parent
    fp = fingerprint(samples, base)
    prefix = f"{source.name}-{hashlib.sha1(str(source).encode(**TEXT)).hexdigest()[:8]}-s{size}c{crop}-"
    name = prefix + fp[:16]
    roots = candidate_roots(base, cache_dir)
    for root in roots:
        packed = open_packed(root / name)
        if packed is not None:
            return packed
    root = next((r for r in roots if _writable(r)), None)
    if root is None:
        raise DataError(f"no writable cache folder for {source} (tried {', '.join(map(str, roots))}); "
                        f"pass --cache-dir=DIR or drop --cache")
    lock = _lock(root, name)
    try:
        try:
            lock.acquire()
        except LockHeld as e:  # another process (a DDP rank, another job) builds it: wait, then use theirs
            log.info(f"waiting for {describe_holder(e.holder)}, which is building the packed cache {root / name}")
            lock.acquire(blocking=True)
    except OSError as e:
        raise DataError(f"cannot lock {lock.path} to build the packed cache ({e.strerror or e}); "
                        "pass --cache-dir=DIR") from None
    try:
        packed = open_packed(root / name, warn=False)
        if packed is not None:
            return packed
        log.info(f"building the packed cache of {len(samples)} images in {root / name}")
        t0 = time.perf_counter()
        packed = build(samples, base, root / name, size, crop, fp, workers, progress)
        log.info(f"cached {len(packed.rows)} images ({packed.nbytes / 2**20:.0f} MiB, {len(packed.bad)} unreadable) "
                 f"in {time.perf_counter() - t0:.1f}s")
        _clean(root, prefix, name)
        return packed
    finally:
        lock.release(remove=True)


def packed_dataset(packed: Packed, samples: Samples, ids: Sequence[str], prepare: Prepare) -> ArrayImages:
    """The samples (any subset of the cached files) as an :class:`ArrayImages` over the cache's pixels."""
    rows = [packed.row(p) for p, _ in samples]
    errors = {str(p): packed.reason(p) for (p, _), r in zip(samples, rows) if r < 0}
    return ArrayImages(packed.pixels, rows, samples, ids, prepare, errors)
