"""Safe file helpers for every layer: atomic writes, free space, bounded reads of our own files (the lock and
process liveness are in ``locks.py``; the JSON inside our files in ``jsonfiles.py``).

Built on the standard library (``tempfile.mkstemp``, ``os.replace``, ``shutil.disk_usage``) rather than a
package: what is added here is what those calls leave to the caller and dogcat needs in one place: temp names
nobody can predict or pre-plant (mkstemp opens with O_EXCL), and a disk-full error that names the folder, the
size needed and the space free (``torch.save`` reports ENOSPC as "unexpected pos").

Paths and names we write into text files use UTF-8 with ``surrogateescape`` (:data:`TEXT`): a file name that
is not valid UTF-8 (Python hands it to us with lone surrogates) is written back byte for byte.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import secrets
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from .config import ConfigError, DogcatError
from .reading import open_regular, read_regular

TEXT: dict[str, str] = {"encoding": "utf-8", "errors": "surrogateescape"}  # open(path, "w", **TEXT)
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
MARGIN = 64 << 10  # a write is refused up front unless its size, 2 % and this much more are free


class DiskFull(DogcatError, OSError):
    """No space (or quota) left for a write; nothing half-written was left behind. The CLI exits 1."""

    exit_code = 1

    def __init__(self, folder: Path | str, need: int | None, free: int | None, what: str = "") -> None:
        super().__init__(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder))
        self.folder, self.need, self.free, self.what = Path(folder), need, free, what

    def __str__(self) -> str:
        need = f"needs about {mib(self.need)}" if self.need else "needs more space"
        free = f"{mib(self.free)} free" if self.free is not None else "free space unknown"
        return (f"disk full: {self.what or 'writing'} in {self.folder} {need}, {free}; nothing half-written was "
                "kept (an earlier file of the same name is untouched). Free some space or write elsewhere")


class MalformedFile(DogcatError, ValueError):
    """A file dogcat wrote (manifest, config, sidecar, ...) that is damaged or of the wrong shape; the CLI exits 2."""


class UnsafePath(DogcatError, OSError):
    """A folder dogcat owns (a run's ``checkpoints/``, ``control/``, ``report/`` ...) or a file it appends to is a
    symbolic link or not what it should be: writing or cleaning through it would touch the link's target, outside
    the place the command line chose. Nothing was written; the CLI exits 2."""


# ---- places the command line names, and OS errors as one line --------------------------------------------

# errors of a path the command line got wrong (exit 2); any other OSError is an outside cause (exit 1): a
# read-only or full disk, no permission, an I/O error
WRONG_PATH = frozenset({errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG, errno.EEXIST, errno.ENOENT, errno.ELOOP,
                        errno.EINVAL})
NAME_MAX, PATH_MAX = 255, 4096  # bytes of one name and of a whole path on Linux file systems


def os_error_exit(e: OSError) -> int:
    """The exit status of an OSError nothing else caught: 2 for a path given wrong, 1 for an outside cause."""
    return 2 if e.errno in WRONG_PATH else 1


def os_error_line(e: OSError) -> str:
    """An OSError as one line that names the path: ``cannot use PATH: Read-only file system``."""
    why = e.strerror or type(e).__name__
    if e.filename is None:
        return f"{why} ({one_line(e)})"
    second = f" -> {e.filename2}" if getattr(e, "filename2", None) else ""
    return f"cannot use {e.filename}{second}: {why}"


def check_place(option: str, path: Path | str, kind: str) -> None:
    """Before anything is made: ``path``, given as ``option``, can be a ``kind`` ("file" or "folder"): not an
    existing folder where a file goes (or a file where a folder goes), not below a file, no name too long. A
    ConfigError line naming the option otherwise (exit 2). Whether the disk takes writes is learnt by writing."""
    p = Path(path).expanduser().absolute()
    if len(os.fsencode(str(p))) >= PATH_MAX or any(len(os.fsencode(x)) > NAME_MAX for x in p.parts):
        raise ConfigError(f"{option}={path}: a name in it is too long for a file system (at most {NAME_MAX} bytes "
                          f"a name, {PATH_MAX} a path)")
    for i, q in enumerate((p, *p.parents)):
        try:
            st = os.stat(q)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as e:
            raise ConfigError(f"{option}={path}: {os_error_line(e)}") from None
        is_dir = stat.S_ISDIR(st.st_mode)
        if i == 0 and kind == "file" and is_dir:
            raise ConfigError(f"{option}={path} is a folder; name a file (in it, or elsewhere)")
        if i == 0 and kind == "folder" and not is_dir:
            raise ConfigError(f"{option}={path} is a file, not a folder")
        if i > 0 and not is_dir:
            raise ConfigError(f"{option}={path}: {q} is a file, so nothing can be made below it")
        return


def mib(n: int | float | None) -> str:
    return "?" if n is None else f"{n / 2**20:,.1f} MiB"


# ---- free space and disk-full errors ---------------------------------------------------------------------

def free_bytes(folder: Path | str) -> int | None:
    """Bytes free to this user under ``folder`` (None where unknown)."""
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def ensure_free(folder: Path | str, need: int, what: str = "") -> None:
    """Raise :class:`DiskFull` before writing ``need`` bytes into ``folder`` when they clearly do not fit."""
    free = free_bytes(folder)
    if free is not None and free < need * 1.02 + MARGIN:
        raise DiskFull(folder, need, free, what)


def reserve_space(path: Path | str, size: int) -> bool:
    """Set ``size`` bytes aside in ``path`` (allocated, not sparse); deleting it later gives them back when
    the disk is full. False when even that does not fit, or the filesystem will not say."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666 & ~umask())
    except OSError:
        return False
    try:
        os.posix_fallocate(fd, 0, size)
        return True
    except OSError:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        return False
    finally:
        os.close(fd)


def is_disk_full(e: BaseException | None) -> bool:
    """True when ``e`` or an exception it came from is ENOSPC / EDQUOT (torch wraps them in RuntimeError)."""
    seen = 0
    while e is not None and seen < 8:
        if isinstance(e, OSError) and e.errno in DISK_FULL:
            return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False


@contextlib.contextmanager
def disk_full_as(folder: Path | str, need: int | None = None, what: str = "") -> Iterator[None]:
    """Turn an ENOSPC / EDQUOT raised inside into :class:`DiskFull` naming ``folder``; other errors pass."""
    try:
        yield
    except DiskFull:
        raise
    except Exception as e:
        if is_disk_full(e):
            raise DiskFull(folder, need, free_bytes(folder), what) from e
        raise


# ---- folders we own, files we append to --------------------------------------------------------------------

def _not_ours(path: Path, st: os.stat_result, what: str) -> UnsafePath:
    if stat.S_ISLNK(st.st_mode):
        try:
            target = f" (to {os.readlink(path)})"
        except OSError:
            target = ""
        return UnsafePath(f"{path} is a symbolic link{target}: dogcat writes its {what} only into a real one it "
                          "made, never through a link (its target is left untouched); remove the link")
    return UnsafePath(f"{path} is not a {what}: dogcat made no such thing here; move it away")


def owned_dirs(path: Path | str, top: Path | str | None = None) -> list[Path]:
    """``path`` and the folders between ``top`` (exclusive) and it: what :func:`safe_dir` checks."""
    path = Path(path)
    if top is None:
        return [path]
    rel = path.relative_to(top)
    return [Path(top).joinpath(*rel.parts[: i + 1]) for i in range(len(rel.parts))]


def check_dir(path: Path | str, top: Path | str | None = None) -> None:
    """Each of :func:`owned_dirs` that exists is a real folder, not a symbolic link (:class:`UnsafePath`)."""
    for p in owned_dirs(path, top):
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(st.st_mode):
            raise _not_ours(p, st, "folder")


def safe_dir(path: Path | str, top: Path | str | None = None) -> Path:
    """A folder dogcat owns, e.g. a run's ``checkpoints/``: made with ``mkdir`` when missing, and refused
    (:class:`UnsafePath`, one line naming it) when a symbolic link or anything but a folder is in its place. With
    ``top`` (the run folder) every folder between ``top`` and ``path`` is made and checked the same way; without
    it, the folders above ``path`` are the caller's (made as usual, links allowed: the command line chose them).
    Writes into the folder then never land in a link's target, and clean-ups there delete nothing of anyone's."""
    path = Path(path)
    chain = owned_dirs(path, top)
    Path(top if top is not None else path.parent).mkdir(parents=True, exist_ok=True)  # the caller's folders
    for p in chain:
        try:
            os.mkdir(p)
        except FileExistsError:
            pass
        st = os.lstat(p)
        if not stat.S_ISDIR(st.st_mode):
            raise _not_ours(p, st, "folder")
    return path


def _append_fd(path: Path | str, what: str) -> int:
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o666 & ~umask())
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENXIO, errno.EISDIR):
            raise _not_ours(Path(path), os.lstat(path), what) from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise _not_ours(Path(path), st, what)
    return fd


def open_append(path: Path | str, what: str = "file", **text: Any) -> Any:
    """``open(path, "a", **text)`` for a regular file, created when missing; a symbolic link (O_NOFOLLOW), a FIFO
    or a device in its place is :class:`UnsafePath`: an append never goes through a link."""
    return open(path, "a", opener=lambda p, flags: _append_fd(p, what), **text)


# ---- atomic writes ---------------------------------------------------------------------------------------

_UMASK: int | None = None


def umask() -> int:
    """The process umask, read without changing it (os.umask would, racing other threads)."""
    global _UMASK
    if _UMASK is None:
        try:
            line = next(ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith("Umask:"))
            _UMASK = int(line.split()[1], 8)
        except (OSError, StopIteration, ValueError, IndexError):
            _UMASK = 0o022
    return _UMASK


def fsync_dir(path: Path | str) -> None:
    """Make a rename durable: fsync the folder that holds it (a no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_file(folder: Path | str, name: str) -> tuple[int, Path]:
    """A new, empty ``folder/.<name>.tmp-XXXXXXXX`` (mkstemp: O_EXCL, an unpredictable name) with the
    permissions ``open()`` would give; returns the open descriptor and the path."""
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.tmp-", dir=folder)
    os.fchmod(fd, 0o666 & ~umask())
    return fd, Path(tmp)


class _Recorder:
    """A file object that remembers the OSError a write raised: ``torch.save`` turns it into a RuntimeError."""

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.error = f, None

    def write(self, data: Any) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        try:
            self.f.flush()
        except OSError as e:
            self.error = e
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self.f, name)


def atomic_write_bytes(path: Path | str, write: Callable[[Any], Any], need: int | None = None,
                       what: str = "") -> None:
    """Write through ``write(fileobj)`` to a mkstemp file in the same folder, fsync, rename over ``path``.

    A crash, kill or full disk leaves the old file or the new one, never half of one; the temp file is
    removed on any failure. ``need`` (bytes, when known cheaply) is checked against the free space first;
    ENOSPC / EDQUOT become :class:`DiskFull`."""
    path = Path(path)
    folder = path.parent
    with disk_full_as(folder, need, what or f"writing {path.name}"):
        folder.mkdir(parents=True, exist_ok=True)
        if need:
            ensure_free(folder, need, what or f"writing {path.name}")
        try:
            fd, tmp = temp_file(folder, path.name)
        except OSError as e:  # a read-only folder, no permission: name the file being written, not a temp name
            if is_disk_full(e):
                raise
            raise OSError(e.errno, e.strerror, str(path)) from e
        try:
            with os.fdopen(fd, "wb") as raw:
                f = _Recorder(raw)
                try:
                    write(f)
                    f.flush()
                    os.fsync(raw.fileno())
                except Exception as e:
                    if f.error is not None and f.error is not e:  # torch.save's RuntimeError hides it
                        raise f.error from e
                    raise
            os.replace(tmp, path)
        except OSError as e:  # name the file being written, not our temp file
            if e.filename is not None and Path(e.filename).name.startswith(f".{path.name}.tmp-") \
                    and not is_disk_full(e):
                raise OSError(e.errno, e.strerror, str(path)) from e
            raise
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    fsync_dir(folder)


def atomic_write_text(path: Path | str, text: str, what: str = "") -> None:
    """:func:`atomic_write_bytes` of ``text`` in UTF-8 (surrogateescape: non-UTF-8 file names round-trip)."""
    data = text.encode(**TEXT)
    atomic_write_bytes(path, lambda f: f.write(data), len(data), what)


def atomic_write_figure(path: Path | str, fig: Any, dpi: int = 100) -> Path:
    """A matplotlib figure as a PNG through :func:`atomic_write_bytes`: rendered into memory first, so a link
    planted at ``path`` is replaced, never written through, and a half-drawn file is never left."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    data = buf.getvalue()
    atomic_write_bytes(path, lambda f: f.write(data), len(data), f"writing {Path(path).name}")
    return Path(path)


def atomic_link_or_copy(src: Path, dst: Path) -> None:
    """Make ``dst`` the same bytes as ``src``, atomically: a hard link under a fresh name (no disk), renamed
    over ``dst``; a copy through :func:`atomic_write_bytes` where links fail."""
    tmp = dst.parent / f".{dst.name}.tmp-{secrets.token_hex(6)}"  # unpredictable; os.link never overwrites
    try:
        os.link(src, tmp)
    except OSError:
        with open(src, "rb") as s:
            atomic_write_bytes(dst, lambda f: shutil.copyfileobj(s, f), os.fstat(s.fileno()).st_size)
        return
    try:
        os.replace(tmp, dst)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


# ---- bounded reads of our own small files (JSON: jsonfiles.py) -----------------------------------------------------------------

def sha256_file(path: Path) -> str:
    """Hex sha256 of a regular file, read in 1 MiB chunks (a FIFO is a ValueError, not a hang)."""
    h = hashlib.sha256()
    with open_regular(path) as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_small(path: Path | str, limit: int = 16 << 20, follow: bool = True) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes (:func:`dogcat.reading.read_regular`: a FIFO or a
    device planted where a file should be must not hang us or fill the memory); ``follow=False`` also refuses a
    final symlink. Raises OSError or ValueError."""
    return read_regular(path, limit, follow)


def one_line(e: BaseException | str, width: int = 300) -> str:
    """An error's text on one line, cut to ``width`` characters."""
    text = " ".join(str(e).split())
    return text if len(text) <= width else text[: width - 1] + "…"
