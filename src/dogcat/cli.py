"""The ``dogcat`` command: parses arguments, calls library functions, prints. No training logic here."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

from .config import ConfigError, help_text, load_config, parse_overrides
from .io import DiskFull, MalformedFile, atomic_write_text, free_bytes, is_disk_full, one_line, printable

USAGE = """usage: dogcat COMMAND [ARGS] [--key=value ...]

commands:
  train   [--config=FILE] [--key=value ...]   train a model (validation every epoch, checkpoints)
  val     [RUN|CKPT] [--key=value ...]        validation metrics + confusion matrix -> RUN/result.json
  test    [RUN|CKPT] [--key=value ...]        Kaggle submission id,label -> RUN/submission.csv
  predict RUN|CKPT|EXPORT PATH... [--output=F.csv] [--trust-export]  classes and probabilities for images
  export  RUN|CKPT [--format=onnx|torchscript|safetensors] [--output=F]  model + F.json sidecar, checked
  lr-find [--config=FILE] [--output=F.png] [--steps=100]  LR range test: plot + suggested lr
  ctl     RUN COMMAND                         steer a running training: set KEY=VALUE, save, eval, stop, debug
  inspect RUN|CKPT                            per-layer parameter / gradient statistics
  runs    [FOLDER] | show RUN | diff A B      table of runs (status, best, differing options); details; compare
  report  RUN [--key=value ...]               RUN/report/index.html: curves, confusion matrix, worst mistakes
  prepare DATA [--size=S] [--cache-dir=D]     decode a data folder / list file once into a packed cache
  models                                      list model names
  help                                        this text and every option with its default

RUN is a run folder (runs/NAME); CKPT a checkpoint or weight file. Options are --key=value; dashes and
underscores are equal, names are flat (--lr) or dotted (--optim.lr). Examples:
  dogcat train --config=configs/fashion-mnist.yaml
  dogcat train --train-data-root=data/train --lr=0.005 --batch-size=32 --model=ResNet34 --max-epoch=20
  dogcat test --test-data-root=data/test --load-model-path=runs/X/checkpoints/best.pt --result-file=submission.csv
"""

log = logging.getLogger("dogcat")


def _split(argv: list[str]) -> tuple[list[str], dict[str, Any]]:
    """Positional arguments and ``--key=value`` overrides (keys normalised to snake_case)."""
    pos = [a for a in argv if not a.startswith("--")]
    ov = parse_overrides([a for a in argv if a.startswith("--")])
    return pos, {k.replace("-", "_").lower(): v for k, v in ov.items()}


def _number(raw: Any, flag: str, cast: type = float) -> Any:
    """A command's own numeric option (not a config key); anything but a finite number is one ConfigError line."""
    try:
        if isinstance(raw, bool):
            raise ValueError
        value = cast(raw)
        if not math.isfinite(value):
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"option {flag} expects a finite {cast.__name__}, got {raw!r}") from None
    return value


def cmd_train(argv: list[str]) -> int:
    from .engine.trainer import train
    from .tracking.run import find_run

    pos, ov = _split(argv)
    if pos:
        raise ConfigError(f"train takes only --key=value options, got {' '.join(pos)!r}")
    config_file = ov.pop("config", None)
    nproc = _number(ov.get("nproc", 1), "--nproc", int)
    if nproc > 1 and "LOCAL_RANK" not in os.environ:  # the shortcut: relaunch under torchrun
        from .engine.distributed import launch

        return launch(nproc, [x for x in argv if not x.replace("_", "-").startswith("--nproc")])
    if ov.get("resume") and not config_file:  # a resumed run starts from its own recorded config
        config_file = find_run(str(ov["resume"]), ov.get("runs_root", "runs")) / "config.yaml"
    result = train(load_config(ov, config_file))
    print(f"run folder: {result.run_dir}")
    return 0


def cmd_val(argv: list[str]) -> int:
    from .engine.evaluator import evaluate

    pos, ov = _split(argv)
    evaluate(pos[0] if pos else None, ov)
    return 0


def cmd_test(argv: list[str]) -> int:
    from .engine.evaluator import test

    pos, ov = _split(argv)
    test(pos[0] if pos else None, ov)
    return 0


def cmd_predict(argv: list[str]) -> int:
    from .engine.evaluator import predict

    pos, ov = _split(argv)
    if len(pos) < 2:
        raise ConfigError("usage: dogcat predict RUN|CKPT|EXPORT PATH... (images, folders or globs)")
    trust = ov.pop("trust_export", False) is True  # predict's own flag, never from a recipe or a checkpoint
    rows = predict(pos[0], pos[1:], ov, trust)
    output = ov.get("output")
    if output:
        _write_predictions(rows, Path(str(output)))
        print(f"wrote {len(rows)} predictions to {output}")
        return 0
    width = max([len(r["path"]) for r in rows] + [4])
    print(f"{'path':<{width}}  {'class':<14} probability")
    for r in rows:
        if "error" in r:
            print(f"{r['path']:<{width}}  {'(unreadable)':<14} {r['error']}")
        else:
            print(f"{r['path']:<{width}}  {r['class']:<14} {r['probability']:.4f}")
    return 0


def _write_predictions(rows: list[dict], out: Path) -> None:
    """CSV or JSON (by extension), written whole or not at all; file names that are not UTF-8 stay as they are."""
    if out.suffix.lower() == ".json":
        atomic_write_text(out, json.dumps(rows, indent=2))
        return
    names = list(next((r["probs"] for r in rows if "probs" in r), {}))
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(["path", "class", "probability", *names, "error"])
    for r in rows:
        probs = [f"{r['probs'][n]:.6f}" for n in names] if "probs" in r else [""] * len(names)
        w.writerow([r.get("path", r.get("index", "")), r.get("class", ""),
                    f"{r['probability']:.6f}" if "probability" in r else "", *probs, r.get("error", "")])
    atomic_write_text(out, buf.getvalue())


def cmd_export(argv: list[str]) -> int:
    from .export import export

    pos, ov = _split(argv)
    if len(pos) != 1:
        raise ConfigError("usage: dogcat export RUN|CKPT [--format=onnx|torchscript|safetensors] [--output=PATH]")
    fmt, output = str(ov.pop("format", "onnx")), ov.pop("output", None)  # export's own options, not config
    res = export(pos[0], fmt, output, ov)
    print(f"wrote {res.path} and its sidecar {res.sidecar}")
    print(f"checked: outputs match PyTorch within {res.max_abs_diff:.1e} at batch sizes 1 and 3")
    return 0


def cmd_lr_find(argv: list[str]) -> int:
    from .engine.lr_find import lr_find

    pos, ov = _split(argv)
    if pos:
        raise ConfigError(f"lr-find takes only --key=value options, got {' '.join(pos)!r}")
    own = {k: _number(ov.pop(k), f"--{k.replace('_', '-')}") for k in ("start_lr", "end_lr", "steps") if k in ov}
    output, config_file = ov.pop("output", None), ov.pop("config", None)
    res = lr_find(load_config(ov, config_file), output, own.get("start_lr", 1e-7), own.get("end_lr", 10.0),
                  int(own.get("steps", 100)))
    if res.suggestion is None:
        print("too few steps before the loss diverged to suggest a learning rate")
        return 1
    print(f"lr range test: {len(res.lrs)} steps, lr {res.lrs[0]:.2g} .. {res.lrs[-1]:.2g}; plot {res.plot}")
    print(f"suggested lr: {res.suggestion:.3g} (steepest descent; lowest loss at {res.min_loss_lr:.3g}, "
          f"/10 = {res.min_loss_lr / 10:.3g})")
    return 0


def cmd_ctl(argv: list[str]) -> int:
    """``dogcat ctl RUN COMMAND [ARG]`` — talk to a running training (see README "Steering a running job")."""
    from .control import NotRunning, send

    timeout = 60.0
    words = []
    for a in argv:
        if a.startswith("--timeout="):
            timeout = _number(a.split("=", 1)[1], "--timeout")
        else:
            words.append(a)
    if len(words) < 2:
        raise ConfigError("usage: dogcat ctl RUN set KEY=VALUE | save | eval | stop | debug [--timeout=SECONDS]")
    try:
        result = send(Path(words[0]), " ".join(words[1:]), timeout)
    except (NotRunning, TimeoutError) as e:
        print(f"dogcat ctl: {e}", file=sys.stderr)
        return 1
    print(f"{'ok' if result['ok'] else 'refused'} at step {result.get('step')}: {result['message']}")
    return 0 if result["ok"] else 2


def cmd_inspect(argv: list[str]) -> int:
    """``dogcat inspect RUN|CKPT|SNAPSHOT``: per-layer parameter (and saved gradient) statistics."""
    import torch

    from .engine.steering import layer_stats
    from .models.weights import torch_load

    pos, _ = _split(argv)
    if len(pos) != 1:
        raise ConfigError("usage: dogcat inspect RUN|CHECKPOINT|debug/step-N/snapshot.pt")
    path = Path(pos[0])
    if path.is_dir():
        path = path / "checkpoints" / "last.pt"
    if not path.is_file():
        raise ConfigError(f"no checkpoint at {path}")
    obj = torch_load(path)
    sd = obj.get("model", obj) if isinstance(obj, dict) else None
    if not isinstance(sd, dict):
        raise ConfigError(f"{path} holds no state_dict (a {type(obj).__name__}); is it a checkpoint?")
    grads = obj.get("grads") if isinstance(obj.get("grads"), dict) else None
    rows = layer_stats({k: v for k, v in sd.items() if isinstance(v, torch.Tensor) and v.is_floating_point()}, grads)
    grads = any("grad_std" in r for r in rows)
    print(f"{path}: {len(rows)} tensors" + ("" if grads else " (no gradients saved: `dogcat ctl RUN debug` saves them)"))
    head = f"{'name':<44} {'shape':<18} {'mean':>10} {'std':>10} {'absmax':>10}"
    print(head + (f" {'grad std':>10} {'grad max':>10}" if grads else ""))
    for r in rows:
        line = (f"{r['name'][:44]:<44} {str(r['shape'])[:18]:<18} {r['mean']:>10.3g} {r['std']:>10.3g} "
                f"{r['absmax']:>10.3g}")
        if grads and "grad_std" in r:
            line += f" {r['grad_std']:>10.3g} {r['grad_absmax']:>10.3g}"
        bad = not r["finite"] or not r.get("grad_finite", True)
        print(line + ("  <- NaN/Inf" if bad else ""))
    return 0


def cmd_runs(argv: list[str]) -> int:
    from .tracking import runs
    from .tracking.run import find_run

    pos, ov = _split(argv)
    root = str(ov.get("runs_root", "runs"))
    if pos[:1] == ["show"] and len(pos) == 2:
        print(runs.show(find_run(pos[1], root)))
    elif pos[:1] == ["diff"] and len(pos) == 3:
        print(runs.diff(find_run(pos[1], root), find_run(pos[2], root)))
    elif len(pos) <= 1 and pos[:1] not in (["show"], ["diff"]):
        folder = Path(pos[0] if pos else root)
        if not folder.is_dir():
            raise ConfigError(f"no folder {folder} (dogcat runs [FOLDER]; default: runs)")
        print(runs.runs_table(runs.find_runs(folder)))
    else:
        raise ConfigError("usage: dogcat runs [FOLDER] | dogcat runs show RUN | dogcat runs diff RUN_A RUN_B")
    return 0


def cmd_report(argv: list[str]) -> int:
    from .tracking.report import make_report

    pos, ov = _split(argv)
    if len(pos) != 1:
        raise ConfigError("usage: dogcat report RUN [--checkpoint=best|last] [--key=value ...]")
    print(f"report: {make_report(pos[0], ov)}")
    return 0


def cmd_prepare(argv: list[str]) -> int:
    from .data import BadFiles, prepare

    pos, ov = _split(argv)
    if len(pos) != 1:
        raise ConfigError("usage: dogcat prepare DATA [--size=S] [--image-size=N] [--cache-dir=DIR]")
    size = ov.pop("size", None)  # prepare's own option: the stored side S, not a config key
    packed = prepare(pos[0], load_config(ov).data, None if size is None else _number(size, "--size", int))
    BadFiles(None).add([(str(packed.base / p), r) for p, r in packed.bad.items()])  # warned as training does
    print(f"cache: {packed.path}\n{len(packed.rows)} images at {packed.size}x{packed.size} "
          f"({packed.nbytes / 2**20:.0f} MiB), {len(packed.bad)} unreadable (listed in bad_files.txt there)")
    return 0


def cmd_models(argv: list[str]) -> int:
    from .models import list_models

    for name, doc in list_models().items():
        print(f"  {name:<12} {doc}")
    print("  timm:<name>        any timm model, e.g. timm:resnet50 (`python -c 'import timm; print(timm.list_models())'`)")
    print("  torchvision:<name> any torchvision classification model, e.g. torchvision:efficientnet_b0")
    return 0


def cmd_help(argv: list[str]) -> int:
    print(USAGE)
    print("options (--key=value; default; doc):", help_text())
    return 0


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "train": cmd_train, "val": cmd_val, "test": cmd_test, "predict": cmd_predict,
    "export": cmd_export, "prepare": cmd_prepare, "ctl": cmd_ctl, "inspect": cmd_inspect, "models": cmd_models,
    "help": cmd_help,
    "runs": cmd_runs, "report": cmd_report, "lr-find": cmd_lr_find,
}


def _show_warning(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
    print(f"warning: {printable(message)}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``dogcat`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        return cmd_help([])
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        import difflib
        close = difflib.get_close_matches(name, list(COMMANDS), n=2)
        print(f"dogcat: unknown command {name!r}" + (f"; did you mean {' or '.join(close)}?" if close else "")
              + f" Commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    if any(a in ("-h", "--help") for a in rest):
        return cmd_help([])
    if hasattr(sys.stdout, "reconfigure"):  # print non-UTF-8 file names as the bytes they are, as ls does
        sys.stdout.reconfigure(errors="surrogateescape")
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    warnings.showwarning = _show_warning
    from .control import TrainingStopped
    from .engine.steering import NonFinite
    from .data import DataError
    from .models import ModelError
    from .export import ExportError
    from .models.weights import WeightsError

    try:
        return COMMANDS[name](rest)
    except (ConfigError, DataError, ExportError, ModelError, WeightsError, MalformedFile) as e:
        # refused (RunLocked is a ConfigError, CheckpointError a WeightsError): one line, whatever the message holds
        print(f"dogcat {name}: error: {printable(one_line(e, 10_000))}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk anywhere (DiskFull, or an ENOSPC we did not wrap): one line, exit 1
        if not is_disk_full(e):
            raise
        folder = getattr(e, "folder", None) or Path(getattr(e, "filename", None) or ".").parent
        full = e if isinstance(e, DiskFull) else DiskFull(folder, None, free_bytes(folder))
        print(f"dogcat {name}: error: {printable(one_line(full, 10_000))}", file=sys.stderr)
        return full.exit_code
    except NonFinite as e:
        print(f"dogcat {name}: {e}", file=sys.stderr)
        return e.exit_code
    except TrainingStopped as e:
        print(f"dogcat {name}: {e}; continue with --resume", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"dogcat {name}: interrupted", file=sys.stderr)
        return 130
