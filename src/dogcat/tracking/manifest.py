"""``manifest.json``: what ran, where, on which code and data; written at start, completed at the end.

The file is replaced atomically each time, so it is whole after a crash; a crashed run's manifest still
says "running", and ``process_alive`` (pid plus the process's start time, so a reused pid does not count)
tells a dead run from a live one.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import sys
import time
import warnings
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..console import redact
from ..hardware import cpu_name
from ..io import MalformedFile, atomic_write_text
from ..jsonfiles import read_json
from ..locks import process_alive, process_start
from .folder import RunFolder

if TYPE_CHECKING:
    from ..config import Config
    from ..data import DataBundle

PATCH = "manifest.patch"  # the uncommitted changes of the code that ran, beside the manifest (git_info)
FORMAT = 1


def now_iso() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


# The types of what dogcat reads back from a manifest (runs, report, a resume): a manifest is valid JSON from
# elsewhere too, and a value of another type must be one line naming it, not a TypeError deep in a table.
# None in a tuple: null is allowed. Keys not listed are only shown (``runs show --json``), never computed with.
TEXT, NUM, LIST = (str,), (int, float), (list,)
FIELDS: dict[str, tuple] = {
    "format": (int,), "run": TEXT, "status": TEXT, "start_time": TEXT, "start_unix": NUM, "end_time": (str, None),
    "duration_s": (*NUM, None), "exit": (dict, None), "pid": (int, None), "pid_start": (int, None),
    "command": LIST, "cwd": TEXT, "seed": (int, None), "split_seed": (int, None), "git": (dict, None),
    "first_start_time": (str, None), "previous_sessions": LIST, "data": (dict, None), "devices": (dict, None),
    "versions": (dict, None), "host": (str, None), "platform": TEXT, "splits": LIST, "device": TEXT,
    "pip_freeze": LIST,
}
INNER: dict[str, dict[str, tuple]] = {
    "git": {"commit": (str, None), "branch": (str, None), "error": (str, None), "patch": (str, None),
            "patch_sha256": (str, None), "dirty": (bool,)},
    "data": {"layout": (str, None), "kind": (str, None), "source": (str, None), "sha256": (str, None), "count": (int, None)},
    "exit": {"status": (str, None), "code": (int, None), "error": (str, None)},
    "devices": {"cuda": LIST, "cpu": (str, None)},
}
SESSION: dict[str, tuple] = {"duration_s": (*NUM, None), "start_time": (str, None), "status": (str, None)}


def _type_ok(v: Any, kinds: tuple) -> bool:
    if v is None:
        return None in kinds
    if isinstance(v, bool) and bool not in kinds:  # JSON true is not a number here
        return False
    return isinstance(v, tuple(k for k in kinds if k is not None))


def check_manifest(m: dict[str, Any], path: Path) -> dict[str, Any]:
    """``m`` when every value dogcat reads back has its type (:data:`FIELDS`), else a MalformedFile naming the
    first one that does not."""
    def bad(key: str, v: Any) -> MalformedFile:
        return MalformedFile(f"manifest {path}: {key} is {str(json.dumps(v))[:80]}, not of the type dogcat writes "
                             "there; it is damaged or not one of dogcat's files")

    checks = [(k, m[k], kinds) for k, kinds in FIELDS.items() if k in m]
    for sec, fields in INNER.items():
        if isinstance(m.get(sec), dict):
            checks += [(f"{sec}.{k}", m[sec][k], kinds) for k, kinds in fields.items() if k in m[sec]]
    for key, v, kinds in checks:
        if not _type_ok(v, kinds):
            raise bad(key, v)
    for key in ("command", "splits", "pip_freeze"):
        if any(not isinstance(x, str) for x in m.get(key) or []):
            raise bad(key, m[key])
    for i, sess in enumerate(m.get("previous_sessions") or []):
        if not isinstance(sess, dict):
            raise bad(f"previous_sessions[{i}]", sess)
        for k, kinds in SESSION.items():
            if k in sess and not _type_ok(sess[k], kinds):
                raise bad(f"previous_sessions[{i}].{k}", sess[k])
    return m


def read_manifest(run_dir: Path) -> dict[str, Any]:
    """The manifest, or ``{}`` when there is none (a run from before manifests); a damaged one (not JSON, not
    an object, a value of the wrong type) is a :class:`~dogcat.io.MalformedFile` naming it."""
    path = RunFolder(run_dir).manifest
    try:
        return check_manifest(read_json(path, "manifest"), path)
    except FileNotFoundError:
        return {}


def write_manifest(run_dir: Path, manifest: dict[str, Any]) -> None:
    atomic_write_text(RunFolder(run_dir).manifest, json.dumps(manifest, indent=2, default=str) + "\n")


# Settings that make git run programs: a repository's config can set them. dogcat asks git only about its
# own repository, and turns these off all the same.
GIT_SAFE = ["-c", "core.fsmonitor=false", "-c", "diff.external="]


def _run(args: list[str], cwd: Path) -> str | None:
    if args[:1] == ["git"]:
        args = ["git", *GIT_SAFE, *args[1:]]
    try:
        out = subprocess.run(args, cwd=cwd, capture_output=True, encoding="utf-8", errors="surrogateescape",
                             timeout=20, stdin=subprocess.DEVNULL,
                             env={**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_OPTIONAL_LOCKS": "0"})
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return out.stdout if out.returncode == 0 else None


def git_info(run_dir: Path, code_dir: Path | None = None) -> dict[str, Any]:
    """Commit, branch and uncommitted changes of the repository dogcat's code is in; the diff goes to
    ``manifest.patch`` (``git apply`` it on the commit to get the code that ran).

    Only dogcat's own repository (its top folder holds ``src/dogcat``, this package): an installed copy inside
    someone else's repository is not asked about, since git would run that repository's configured programs."""
    code_dir = (code_dir or Path(__file__).resolve().parent.parent).resolve()
    top = _run(["git", "rev-parse", "--show-toplevel"], code_dir)
    if top is None:
        return {"commit": None, "error": "not a git repository (or git is missing)"}
    repo = Path(top.strip())
    if (repo / "src" / "dogcat").resolve() != code_dir:
        return {"commit": None, "error": f"dogcat is installed inside another repository ({repo}): not recorded"}
    commit = (_run(["git", "rev-parse", "HEAD"], repo) or "").strip() or None
    branch = (_run(["git", "rev-parse", "--abbrev-ref", "HEAD"], repo) or "").strip() or None
    diff = _run(["git", "diff", "HEAD", "--binary", "--no-ext-diff", "--no-textconv"], repo) if commit else None
    untracked = (_run(["git", "ls-files", "--others", "--exclude-standard"], repo) or "").split()
    info: dict[str, Any] = {"repo": str(repo), "commit": commit, "branch": branch, "dirty": bool(diff),
                            "patch": None, "untracked": untracked[:200]}
    if diff:
        atomic_write_text(Path(run_dir) / PATCH, diff)
        info["patch"] = PATCH
        info["patch_sha256"] = hashlib.sha256(diff.encode("utf-8", "surrogateescape")).hexdigest()
    return info


def pip_freeze() -> list[str]:
    """``name==version`` of every installed distribution (importlib.metadata: no pip subprocess)."""
    pkgs = {(d.metadata["Name"] or "?"): d.version for d in importlib.metadata.distributions()}
    return sorted(f"{n}=={v}" for n, v in pkgs.items())


def environment() -> dict[str, Any]:
    """Versions and devices; CUDA / cuDNN are the versions torch was built with (None: a CPU-only build)."""
    import torch  # here, not at the top: `dogcat runs` reads manifests without loading torch

    cuda = torch.cuda.is_available()
    try:
        import torchvision
        tv = torchvision.__version__
    except ImportError:
        tv = None
    from .. import __version__
    return {
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "torchvision": tv,
                     # the CUDA / cuDNN this torch was built with; "devices" says whether a GPU was there
                     "cuda": torch.version.cuda,
                     "cudnn": torch.backends.cudnn.version() if torch.version.cuda else None,
                     "dogcat": __version__},
        "devices": {"cuda": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
                    "cpu": cpu_name(), "cpu_count": os.cpu_count()},
        "platform": platform.platform(), "host": socket.gethostname(),
        "pip_freeze": pip_freeze(),
    }


def data_fingerprint(bundle: DataBundle, cfg: Config) -> dict[str, Any]:
    """The manifest's record of the data: its layout (``layout``; ``kind`` in older manifests), what the layout fingerprints (``sha256``,
    ``method``, ...) and ``source``, the folder or file ``dogcat runs`` names the data after."""
    from ..data import get_layout  # here, not at the top: `dogcat runs` reads manifests without torch

    layout = get_layout(bundle.layout)
    return {"layout": bundle.layout, **layout.fingerprint(bundle, cfg.data), "source": layout.sources(cfg.data)[0]}


class Manifest:
    """The run's manifest.json: ``start`` (at launch), ``update`` (data known), ``finish`` (at the end)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.data: dict[str, Any] = {}

    def start(self, cfg: Config) -> None:
        try:
            old = read_manifest(self.run_dir)
        except MalformedFile as e:  # a record, not an input: start a new one rather than refuse the resume
            warnings.warn(f"{e}; writing a new one (earlier sessions' records are lost)")
            old = {}
        previous = list(old.get("previous_sessions", []))
        if old:  # a resume: keep the earlier session's record and patch
            patch = None
            if (self.run_dir / PATCH).exists():
                patch = f"manifest.session-{len(previous) + 1}.patch"
                os.replace(self.run_dir / PATCH, self.run_dir / patch)
            previous.append({k: old.get(k) for k in ("start_time", "end_time", "duration_s", "status", "exit",
                                                     "pid", "host", "command")}
                            | {"git_commit": (old.get("git") or {}).get("commit"), "patch": patch})
        self.data = {
            "format": FORMAT, "run": self.run_dir.name, "status": "running",
            "start_time": now_iso(), "start_unix": round(time.time(), 3), "end_time": None, "duration_s": None,
            "exit": None, "pid": os.getpid(), "pid_start": process_start(os.getpid()),
            "command": [redact(a) for a in sys.argv], "cwd": os.getcwd(), "seed": cfg.train.seed, "split_seed": cfg.data.split_seed,
            "git": git_info(self.run_dir), **environment(),
            "first_start_time": old.get("first_start_time") or old.get("start_time") or now_iso(),
            "previous_sessions": previous,
        }
        write_manifest(self.run_dir, self.data)

    def update(self, **fields: Any) -> None:
        self.data.update(fields)
        write_manifest(self.run_dir, self.data)

    def finish(self, status: str, error: BaseException | None = None) -> None:
        code = 0 if status in ("finished", "stopped", "pruned") and error is None else getattr(error, "exit_code", None)
        if code is None and isinstance(error, KeyboardInterrupt):
            code = 130
        self.update(status=status, end_time=now_iso(),
                    duration_s=round(time.time() - self.data.get("start_unix", time.time()), 3),
                    exit={"status": status, "code": code,
                          "error": redact(f"{type(error).__name__}: {error}") if error is not None else None})
