"""The ``dogcat`` command: parses arguments, calls library functions, prints. No training logic here.

Importing this package loads no torch (only the config layer): ``dogcat --version``, ``help``, ``runs`` and
``completion`` start in a fraction of a second; commands that train or load a model import it when they run.
"""

from __future__ import annotations

import difflib
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from .. import __version__
from ..config import OPTIONS, DogcatError, flag, help_text, read_environ, where_from
from ..console import printable, redact
from ..io import DiskFull, check_place, free_bytes, is_disk_full, one_line, os_error_exit, os_error_line
from ..sweep import PRUNERS
from . import commands as c, use
from .args import ALL, Command, Own, build_parser, finite, parse
from .completion import script

# The options each command reads (train and lr-find: all). A command refuses the others, naming them.
DEVICE = {"device", "use_gpu", "precision", "channels_last"}
MODEL_FILE = {"load_model_path", "model", "load_not_strict", "checkpoint", "image_size"}  # model, image_size: for
# a bare state_dict, which records neither
LOADING = {"batch_size", "num_workers", "cache", "cache_dir", "in_memory_mb", "progress", "print_freq"}
VAL_DATA = {"dataset", "train_data_root", "val_data_root", "train_list", "val_list", "fashion_mnist_root",
            "val_split", "split_seed"}
VAL = frozenset(DEVICE | MODEL_FILE | LOADING | VAL_DATA | {"tta", "report", "calibration"})
TEST = frozenset(DEVICE | MODEL_FILE | LOADING | {"test_data_root", "test_list", "fashion_mnist_root", "tta",
                                                  "result_file", "positive_class", "sample_submission", "clip_probs",
                                                  "calibration"})
PREDICT = frozenset(DEVICE | MODEL_FILE | {"batch_size", "tta", "output", "top_k", "calibration"})
EXPLAIN = frozenset(DEVICE | MODEL_FILE | {"batch_size", "calibration"})
EMBED = frozenset(DEVICE | MODEL_FILE | {"batch_size", "tta"})
CALIBRATE = frozenset(DEVICE | MODEL_FILE | LOADING | VAL_DATA)
# a sweep: any option for every trial, but not those it sets per trial; --seed is the sampler's (own option)
SWEEP = ALL - {"seed", "resume", "run_dir", "env", "debug_file"}
TARGET = ("target", "?", "a run folder (runs/NAME) or checkpoint file; default: --load-model-path")
JSON = Own("json", "print the result as JSON", None)
CONFIG = Own("config", "a YAML recipe (flat or nested by section) or a built-in recipe's name; several merge in "
                       "the order given, a later one's values win (-c A -c B)", short="c", append=True)
PRINT_CONFIG = Own("print-config", "print the fully resolved config as YAML (what the run's config.yaml would "
                                   "hold; loadable with --config, places aside) and exit; reads no data, writes "
                                   "nothing", None)
PRECEDENCE = ("values, later wins: the defaults, each -c/--config in the order given, DOGCAT_* environment variables\n"
              "(DOGCAT_LR=0.01, DOGCAT_BATCH_SIZE=64, DOGCAT_OPTIM__LR=0.01), the command line; --print-config shows "
              "the result")


def _help(a: Any, ov: dict[str, Any]) -> int:
    if a.command:
        if a.command not in COMMANDS:
            raise DogcatError(f"unknown command {a.command!r}; commands: {', '.join(COMMANDS)}")
        build_parser(COMMANDS[a.command]).print_help()
        return 0
    print(usage())
    print("options by section (--key=value or --key value; default; doc):", help_text())
    return 0


def _completion(a: Any, ov: dict[str, Any]) -> int:
    print(script(a.shell, COMMANDS))
    return 0


_LIST = [
    Command("train", "train a model: validation every epoch, checkpoints, run folder runs/NAME", c.train,
            options=ALL, own=[CONFIG, PRINT_CONFIG,
                              Own("dry-run", "train N batches and validate N batches (default 2) through the real "
                                             "code path in a temporary run folder, then delete it and print what it "
                                             "did (--dry-run=N)", finite(int), const=2, aliases=("fast-dev-run",),
                                  metavar="N")],
            epilog="examples:\n  dogcat train --config=fashion-mnist   (a built-in recipe: `dogcat recipes`)\n"
                   "  dogcat train --train-data-root data/train --model resnet34 --max-epoch 20 --lr 0.005\n"
                   "  dogcat train -c fashion-mnist -c mine.yaml --lr=0.01 --print-config\n"
                   "  dogcat train -c mine.yaml --dry-run   (2 batches of training and of validation; nothing kept)\n"
                   "  dogcat train --resume runs/NAME --max-epoch 30\n" + PRECEDENCE),
    Command("val", "validation metrics + confusion matrix of a trained model -> RUN/result.json", c.val,
            [TARGET], VAL, [JSON]),
    Command("test", "scores a test set / writes the Kaggle submission id,label -> RUN/submission.csv", c.test,
            [TARGET], TEST, [JSON]),
    Command("calibrate", "fit a temperature on the run's validation split; store it in the checkpoint (val, test, "
            "predict and exports apply it)", c.calibrate, [TARGET], CALIBRATE, [JSON],
            epilog="examples:\n  dogcat calibrate runs/NAME                      (best.pt)\n"
                   "  dogcat calibrate runs/NAME --checkpoint=last\n"
                   "  dogcat calibrate runs/NAME/checkpoints/epoch-0010.pt\n"
                   "  dogcat val runs/NAME --no-calibration          (the raw probabilities)"),
    Command("predict", "class and probabilities for image files, folders or globs", use.predict,
            [("target", None, "a run folder, checkpoint, or exported model (+ its .json sidecar)"),
             ("paths", "+", "image files, folders (recursive) or globs")], PREDICT,
            [Own("trust-export", "load a TorchScript export, which is a program: only one you trust", None)],
            epilog="--output=F.csv or F.json writes a file, --output=- CSV to stdout; default: a table"),
    Command("embed", "features of images (the layer before the classifier) -> a .parquet or .npy file", use.embed,
            [("target", None, "a run folder, checkpoint, or safetensors export (+ its .json sidecar)"),
             ("paths", "+", "image files, folders (recursive) or globs")], EMBED,
            [Own("output", "file to write: .parquet (columns path, embedding; needs pyarrow) or .npy (an N x D "
                           "float32 array, rows in the order predict lists the files, NaN for unreadable ones)",
                 default="features.npy")]),
    Command("export", "the model as ONNX, TorchScript or safetensors + a JSON sidecar, checked against PyTorch",
            use.export, [TARGET], frozenset(MODEL_FILE),
            [Own("format", "onnx, torchscript or safetensors", default="onnx"),
             Own("output", "file to write (default RUN/export/model.<ext>)")]),
    Command("explain", "Grad-CAM: one PNG per image of what the model looked at -> RUN/explain/", use.explain,
            [("run", None, "a run folder, checkpoint, or safetensors export (+ its .json sidecar)"),
             ("paths", "+", "image files, folders (recursive) or globs")], EXPLAIN,
            [Own("output", "folder for the PNGs (default: RUN/explain, or explain/ next to the checkpoint)"),
             Own("target", "explain this class (a name or an index) instead of the predicted one"),
             Own("layer", "the layer Grad-CAM looks at, e.g. layer4 (default: the last convolutional block; "
                          "`dogcat summary` lists the layers)")],
            epilog="needs captum: pip install 'dogcat-vision[explain]'. ONNX and TorchScript exports cannot be "
                   "explained\n(no torch module): use the run, its checkpoint or a safetensors export"),
    Command("summary", "a model's layers, parameters, FLOPs per image and activation memory", use.summary,
            options=frozenset({"model", "image_size"}),
            own=[Own("in-chans", "input channels: 3 (RGB) or 1 (grayscale) (default: 3)", finite(int), 3),
                 Own("num-classes", "classes of the classifier head (default: 2)", finite(int), 2),
                 Own("depth", "list modules down to this depth, each with its children's totals "
                              "(default: every leaf module)", finite(int)), JSON],
            epilog="examples:\n  dogcat summary --model=smallcnn --image-size=28 --in-chans=1 --num-classes=10\n"
                   "  dogcat summary --model=resnet34 --depth=2 --json"),
    Command("lr-find", "LR range test: plot + suggested lr", c.lr_find, options=ALL - {"output"},
            own=[CONFIG, PRINT_CONFIG, Own("output", "the plot (.png) or a folder"),
                 Own("steps", "steps of the test", finite(int), 100),
                 Own("start-lr", "first lr", finite(float), 1e-7), Own("end-lr", "last lr", finite(float), 10.0)],
            epilog=PRECEDENCE),
    Command("ctl", "steer a running training: set KEY=VALUE, save, eval, stop, debug", c.ctl,
            [("run", None, "the run folder"), ("words", "+", "set KEY=VALUE | save | eval | stop | debug")],
            own=[Own("timeout", "seconds to wait for the answer", finite(float), 60.0)]),
    Command("inspect", "per-layer parameter / gradient statistics of a checkpoint", use.inspect,
            [("target", None, "a run folder, checkpoint or debug/step-N/snapshot.pt")]),
    Command("runs", "the runs under a folder; one run in detail; two runs compared", c.runs,
            [("words", "*", "[FOLDER] | show RUN | diff RUN_A RUN_B")], frozenset({"runs_root"}), [JSON]),
    Command("report", "RUN/report/index.html: curves, confusion matrix, per-class scores, worst mistakes",
            c.report, [("target", None, "a run folder")], VAL - {"report"}),
    Command("sweep", "hyperparameter search with Optuna: each trial a run folder RUNS/NAME/trial-NNNN", c.sweep,
            [("words", "+", "SPACE.yaml (a recipe + a search: block) | show NAME")], SWEEP,
            [Own("trials", "finished-or-pruned trials the study should hold, over every process and re-run "
                           "(default: 20)", finite(int), 20),
             Own("timeout", "seconds after which this process starts no new trial", finite(float)),
             Own("name", "the sweep's name: folder RUNS/NAME and study name (default: the space file's name)"),
             Own("storage", "an Optuna database URL (postgresql://..., sqlite:///...) or a journal file path "
                            "(default: RUNS/NAME/study.db)"),
             Own("pruner", "stop poor trials early, judged each epoch", default="median", choices=PRUNERS),
             Own("seed", "seed of the sampler (the training seed is the recipe's --seed)", finite(int), 0), JSON,
             Own("print-config", "print the config every trial starts from (recipe, DOGCAT_* variables, command "
                                 "line; the searched options listed in a comment) as YAML and exit", None)],
            epilog="examples:\n  dogcat sweep sweep-fashion-mnist --trials=12 --timeout=1080   (a built-in space)\n"
                   "  dogcat sweep show sweep-fashion-mnist\n"
                   "  dogcat train --config=runs/sweep-fashion-mnist/best.yaml\n"
                   "needs optuna: pip install 'dogcat-vision[sweep]'"),
    Command("prepare", "decode a data folder or list file once into the packed cache --cache uses", c.prepare,
            [("data", None, "a data folder or list file")], frozenset({"image_size", "cache_dir"}),
            [Own("size", "the stored side S (default: what --image-size needs)", finite(int))]),
    Command("stats", "a data set's class counts, image sizes and modes, unreadable files, mean and std", c.stats,
            [("data", None, "a data folder, list file or Fashion-MNIST folder (any layout: --dataset)")],
            frozenset({"dataset", "fashion_mnist_root", "image_size"}), [JSON],
            epilog="mean/std are per channel, pixel values 0-1, over every pixel of every readable image;\n"
                   "--normalize=dataset trains with the same statistics of the training split"),
    Command("models", "list model names", c.models),
    Command("recipes", "the built-in recipes (--config=NAME); `dogcat recipes NAME` prints one to copy and edit",
            c.recipes, [("name", "?", "a built-in recipe's name")],
            epilog="examples:\n  dogcat recipes\n  dogcat train --config=fashion-mnist --max-epoch=3\n"
                   "  dogcat recipes fashion-mnist > my.yaml   # then edit it: dogcat train --config=my.yaml\n"
                   "a --config that is an existing file is read as that file; a bare name is a built-in recipe"),
    Command("demo", "train the Fashion-MNIST recipe on the CPU, test it, predict a few images (1.5-3 minutes)",
            c.demo, options=ALL,
            own=[Own("config", "more recipes on top of the built-in fashion-mnist one, in order (-c A -c B)",
                     short="c", append=True), PRINT_CONFIG],
            epilog="runs in any folder: the run folder goes to ./runs/demo-fashion-mnist*; options as for train,\n"
                   "e.g. dogcat demo --max-epoch=2 --runs-root=/tmp/runs\n" + PRECEDENCE),
    Command("completion", "print a shell completion script: eval \"$(dogcat completion bash)\"", _completion,
            [("shell", None, "bash or zsh")]),
    Command("help", "usage and every option with its default (`dogcat help COMMAND`: one command's)", _help,
            [("command", "?", "a command")]),
]
COMMANDS: dict[str, Command] = {cmd.name: cmd for cmd in _LIST}


def usage() -> str:
    lines = ["usage: dogcat COMMAND [ARGS] [--key=value | --key value ...]", "", "commands:"]
    lines += [f"  {cmd.name:<10} {cmd.summary}" for cmd in _LIST]
    lines += ["", "`dogcat COMMAND --help` shows what a command takes; `dogcat help` lists every option. Options: "
              "--key=value or --key value;", "dashes and underscores are equal; flat (--lr) or dotted (--optim.lr); "
              "--flag / --no-flag for switches; -q quiet, -v verbose.", "Values, later wins: defaults, each -c/--config "
              "in order, DOGCAT_* environment variables (DOGCAT_LR=0.01), the command line.", f"dogcat {__version__}"]
    return "\n".join(lines)


def _show_warning(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
    print(f"warning: {redact(printable(message))}", file=sys.stderr, flush=True)


def _setup_output(quiet: bool, verbose: bool) -> None:
    """Logs and warnings to stderr (results alone go to stdout): INFO, WARNING with -q, DEBUG with -v."""
    from ..console import use_for_cli

    use_for_cli(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)
    warnings.showwarning = _show_warning


def environ_options(cmd: Command, given: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """The ``DOGCAT_*`` variables (config/environ.py) that set options this command reads and its command line
    does not. Under torchrun only rank 0 warns about a variable that is no option (each rank reads them)."""
    if not cmd.options:
        return {}
    taken = read_environ(os.environ, cmd.options, warn=os.environ.get("RANK", "0") == "0")
    return {k: v for k, v in taken.items() if k not in given}
# The places a command writes to, by option: a file or a folder. ``output`` is each command's own: a file for
# predict and export, a folder for explain, a PNG or a folder for lr-find.
PLACES = {"runs_root": "folder", "run_dir": "folder", "cache_dir": "folder", "result_file": "file"}
OUTPUT = {"predict": "file", "export": "file", "embed": "file", "explain": "folder", "lr-find": "png"}


def check_places(cmd: Command, args: Any, overrides: dict[str, Any]) -> None:
    """Each place the command line gives can be what the command makes there (io.check_place), before anything
    is made: a folder where a file goes, a path below a file, a name too long are one line naming the option."""
    given = {flag(k): (v, kind) for k, kind in PLACES.items() if isinstance(v := overrides.get(k), str) and v}
    output = overrides.get("output", getattr(args, "output", None))
    if cmd.name in OUTPUT and isinstance(output, str) and output and output != "-":
        kind = OUTPUT[cmd.name]
        given["--output"] = (output, kind if kind != "png" else "file" if Path(output).suffix == ".png" else "folder")
    for option, (value, kind) in given.items():
        check_place(option, value, kind)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``dogcat`` console script; returns the exit status. Output into a pipe its reader
    closed (``dogcat runs | head -1``) ends quietly with 141, as ``ls`` does (128 + SIGPIPE)."""
    try:
        code = _main(argv)
        sys.stdout.flush()  # here, not at exit: a closed pipe must surface where it is caught
        return code
    except BrokenPipeError:
        for stream in (sys.stdout, sys.stderr):  # Python's advice: point them at devnull, so the flush at exit
            try:                                 # does not fail again with "Exception ignored"
                os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
            except (OSError, ValueError, AttributeError):
                pass
        return 141


def _main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        print(f"dogcat {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, list(COMMANDS), n=2)
        print(f"dogcat: unknown command {name!r}" + (f"; did you mean {' or '.join(close)}?" if close else "")
              + f" Commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    cmd = COMMANDS[name]
    if any(a in ("-h", "--help") for a in rest):
        build_parser(cmd).print_help()
        return 0
    if hasattr(sys.stdout, "reconfigure"):  # print non-UTF-8 file names as the bytes they are, as ls does
        sys.stdout.reconfigure(errors="surrogateescape")
    taken: dict[str, tuple[str, str]] = {}  # options set by DOGCAT_* variables: {option: (variable, value)}

    def say(text: str, error: bool = True) -> None:  # one line; credentials in URIs masked
        print(f"dogcat {name}: {'error: ' if error else ''}{redact(printable(one_line(text, 10_000)))}",
              file=sys.stderr)

    try:
        args, overrides = parse(cmd, rest)
        if args.quiet and "progress" in cmd.options:
            overrides.setdefault("progress", "none")
        _setup_output(args.quiet, args.verbose)
        taken = environ_options(cmd, overrides)
        args.environ = frozenset(taken)  # for a command that must tell them from the command line's
        options = {**{k: v for k, (_, v) in taken.items()}, **overrides}  # the command line wins
        check_places(cmd, args, options)  # before anything is made
        return cmd.run(args, options)
    except DogcatError as e:  # refused input, a damaged file, a held lock, a full disk, a stopped run: one line
        text = one_line(e, 10_000)
        say(where_from(text, taken) if e.exit_code == 2 else text, e.exit_code in (1, 2))
        return e.exit_code
    except TimeoutError as e:
        say(str(e), False)
        return 1
    except BrokenPipeError:  # the reader of our output left: main() ends quietly with 141
        raise
    except OSError as e:  # anything the library did not name: one line naming the path
        if is_disk_full(e):  # a full disk we did not wrap (e.g. in a library's own write): exit 1
            folder = Path(getattr(e, "filename", None) or ".").parent
            say(str(DiskFull(folder, None, free_bytes(folder))))
            return DiskFull.exit_code
        say(os_error_line(e))
        return os_error_exit(e)
    except KeyboardInterrupt:
        print(f"dogcat {name}: interrupted", file=sys.stderr)
        return 130


__all__ = ["COMMANDS", "OPTIONS", "main", "usage"]
