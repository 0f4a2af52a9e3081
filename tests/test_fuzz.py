"""Fuzz tests (hypothesis). Issue 14's: (a) random argument lists and YAML recipes through ``dogcat.cli.main``
end in exit 0, or exit 2 with one error line, never a traceback; (b) random, truncated and mutated image bytes
through the decoders, a dataset and the packed-cache builder: every file is read or reported, nothing raises.
Issue 21's: (c) a manifest of valid JSON with values of any type is read or one MalformedFile, and what `runs`
and the report compute from a read one never raises; (d) no password in a URI survives ``console.redact``.

They run in ``make test`` with a fixed set of cases (derandomized: 1000 argument lists, 300 recipes, 500 sets of
image files; issue 21 added 60 nested or alias-bomb texts and 50 sets of names); DOGCAT_FUZZ_EXAMPLES=5000 runs
that many of each, at random. The arguments are generated as ``--key=value``, ``--key`` and bare words, never
through the parser's own functions, so the test holds for any parser."""

from __future__ import annotations

import io
import os
import string
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from dogcat.cli import main
from dogcat.config import OPTIONS, ConfigError, load_config

EXAMPLES = int(os.environ.get("DOGCAT_FUZZ_EXAMPLES", "0"))
FIXED = EXAMPLES == 0  # make test: the same cases every run
ran = {"args": 0, "recipes": 0, "images": 0, "nesting": 0, "names": 0, "manifests": 0, "uris": 0}


def fuzz_settings(default: int):
    return settings(max_examples=EXAMPLES or default, deadline=None, derandomize=FIXED, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large])


# ---- (a) argument lists and recipes ------------------------------------------------------------------------

SAFE = string.ascii_letters + string.digits + "_-"  # words that name nothing in the empty working folder
CHOICES = sorted({c for _, f in OPTIONS.values() for c in (f.metadata.get("choices") or ())})
keys = st.one_of(
    st.sampled_from(sorted(OPTIONS)).map(lambda k: k.replace("_", "-")),
    st.sampled_from(sorted(OPTIONS)),
    st.sampled_from(sorted(OPTIONS)).map(lambda k: f"{OPTIONS[k][0]}.{k}"),
    st.sampled_from(["config", "output", "format", "size", "steps", "start-lr", "end-lr", "timeout", "trust-export",
                     "nproc", "resume", "help", "version", "target", "layer", "in-chans", "num-classes", "depth"]),
    st.text(SAFE + ".", min_size=1, max_size=14),  # unknown keys
)
values = st.one_of(
    st.integers(-10**20, 10**20).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["nan", ".nan", "inf", "-.inf", "1e400", "-0", "0x1F", "true", "no", "none", "null", "~", "",
                     "[1,2]", "[3,-1]", "[", "]", "{a: b}", "a: b", "0.02,0.98", "1,2,3", "'", '"', "[[]]", "- x",
                     "!!python/object:os.system x", "&a [*a]", "0", "1", "2", "-1", "1e-9", "latest", "auto"]),
    st.sampled_from(CHOICES),
    st.text(SAFE, min_size=1, max_size=12),
    st.text(max_size=12).filter(lambda v: not v.lstrip().startswith(("/", "~", "."))),  # any text, no real place
)
words = st.one_of(st.text(SAFE, min_size=1, max_size=10).filter(lambda w: not w.startswith("-")),
                  st.sampled_from(["show", "diff", "set", "lr=0.1", "stop", "save", "eval", "debug", "runs"]))
argument = st.one_of(st.tuples(keys, values).map(lambda kv: f"--{kv[0]}={kv[1]}"), keys.map(lambda k: f"--{k}"),
                     words)
COMMANDS = ["train", "train", "train", "val", "test", "predict", "export", "lr-find", "prepare", "runs", "ctl",
            "inspect", "report", "models", "help", "explain", "summary", "nosuch"]


@pytest.fixture
def sealed(tmp_path, monkeypatch):
    """An empty working folder and no Fashion-MNIST anywhere (nor a download), no torchrun relaunch: whatever
    the arguments say, nothing trains, nothing is fetched, and nothing outside tmp_path is read or written."""
    from dogcat.data import fashion_mnist
    from dogcat.engine import distributed

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(fashion_mnist, "DEBIAN_ROOT", tmp_path / "no-debian")
    monkeypatch.setattr(fashion_mnist, "CACHE_ROOT", tmp_path / "no-cache")

    def offline() -> Path:
        raise OSError("no network in this test")

    monkeypatch.setattr(fashion_mnist, "_download", offline)
    monkeypatch.setattr(distributed, "launch", lambda nproc, argv: 0)
    return tmp_path


def run_main(argv: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:  # a parser that exits (argparse) is an outcome too
        code = e.code if isinstance(e.code, int) else 2
    cap = capsys.readouterr()
    return code, cap.err


def check(code: int, err: str, argv: list[str]) -> None:
    assert "Traceback" not in err, (argv, err)
    assert code in (0, 2), (argv, code, err)
    if code == 2:
        errors = [ln for ln in err.splitlines() if "error:" in ln or "unknown command" in ln]
        assert len(errors) == 1, (argv, err)


@fuzz_settings(1000)
@given(command=st.sampled_from(COMMANDS), args=st.lists(argument, max_size=6))
def test_fuzz_arguments_exit_0_or_2_with_one_message(sealed, capsys, command, args):
    ran["args"] += 1
    argv = [command, *args]
    code, err = run_main(argv, capsys)
    check(code, err, argv)
    assert not list(sealed.rglob("config.yaml")), argv  # no run folder is made by a command that failed


scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True),
                    st.text(max_size=10).filter(lambda v: not v.lstrip().startswith(("/", "~", "."))),
                    st.sampled_from(CHOICES))
tree_values = st.recursive(scalars, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(keys, kids, max_size=3),
                           max_leaves=6)
recipes = st.one_of(
    st.dictionaries(keys, tree_values, max_size=6),
    st.dictionaries(st.sampled_from(["data", "model", "optim", "train", "eval", "other"]),
                    st.dictionaries(st.sampled_from(sorted(OPTIONS)), tree_values, max_size=4), max_size=3),
    st.lists(scalars, max_size=3),
    scalars,
)


@fuzz_settings(300)
@given(recipe=recipes, raw=st.one_of(st.none(), st.binary(max_size=200), st.text(max_size=200)))
def test_fuzz_yaml_recipes_exit_0_or_2_with_one_message(sealed, capsys, recipe, raw):
    ran["recipes"] += 1
    path = sealed / "recipe.yaml"
    if raw is None:
        path.write_text(yaml.safe_dump(recipe))
    else:
        path.write_bytes(raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass"))
    try:
        load_config(config_file=path)  # the library: a Config or a ConfigError, nothing else
    except ConfigError:
        pass
    code, err = run_main(["train", f"--config={path}"], capsys)
    check(code, err, ["train", f"--config={path} ({raw!r} / {recipe!r})"])


@st.composite
def nested_text(draw) -> str:
    """JSON / YAML text nested up to 300 levels, or YAML whose aliases expand to up to 10 ** 9 values."""
    kind = draw(st.sampled_from(["brackets", "braces", "mixed", "aliases", "recursive"]))
    depth = draw(st.integers(0, 300))
    if kind == "brackets":
        return "[" * depth + "]" * depth
    if kind == "braces":
        return '{"a": ' * depth + "1" + "}" * depth
    if kind == "mixed":
        opens = draw(st.lists(st.sampled_from(["[", '{"k": ']), min_size=depth, max_size=depth))
        return "".join(opens) + "0" + "".join("]" if o == "[" else "}" for o in reversed(opens))
    if kind == "recursive":
        return "&a [*a, 1]"
    levels, width = draw(st.integers(1, 9)), draw(st.integers(1, 10))
    lines = ["  - &a0 [" + ", ".join(["x"] * width) + "]"]
    lines += [f"  - &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "\n" + "\n".join(lines)


@fuzz_settings(60)
@given(text=nested_text(), key=st.sampled_from(["lr", "model", "milestones", "env", "unknown_key"]))
def test_fuzz_nesting_and_alias_bombs_are_values_or_one_line(sealed, capsys, text, key):
    """Issue 21: nesting and expansion are capped while parsing (dogcat.reading); a recipe is read or refused
    with one line, a JSON file of ours is read or one MalformedFile line, never a RecursionError or MemoryError."""
    from dogcat import reading
    from dogcat.io import MalformedFile
    from dogcat.jsonfiles import read_json

    ran["nesting"] += 1
    for parse in (reading.loads_json, reading.load_yaml):
        try:
            value = parse(text)
        except (ValueError, yaml.YAMLError):
            continue
        reading.check_tree(value)  # what parsed stays within the caps
    path = sealed / "x.json"
    path.write_text('{"a": ' + text + "}")
    try:
        read_json(path, "sidecar")
    except MalformedFile:
        pass
    path = sealed / "recipe.yaml"
    path.write_text(f"{key}: {text}\n")
    code, err = run_main(["train", f"--config={path}"], capsys)
    check(code, err, ["train", f"--config={path} ({text[:200]!r})"])


@fuzz_settings(50)
@given(names=st.lists(st.text(min_size=1, max_size=12), min_size=2, max_size=3, unique=True))
def test_fuzz_names_are_shown_on_one_line_and_drawn(tmp_path_factory, names):
    """Issue 21: any class or file name (controls, $...$, backslashes, non-UTF-8 bytes) is shown escaped on one
    line, draws in a figure, and stays one line of bad_files.txt."""
    import warnings

    from dogcat.console import escape, printable
    from dogcat.data.images import BadFiles
    from dogcat.tracking.figures import confusion_figure, to_array

    ran["names"] += 1
    names = [n.encode("utf-8", "surrogatepass").decode("utf-8", "surrogateescape") for n in names]
    controls = {*map(chr, range(0x20)), "\x7f", *map(chr, range(0x80, 0xA0))}
    for n in names:
        assert not controls & set(escape(n)), repr(n)
        assert not (controls - {"\n", "\t"}) & set(printable(n)), repr(n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # glyphs the font lacks
        to_array(confusion_figure([[1] * len(names)] * len(names), names))
        path = tmp_path_factory.mktemp("names") / "bad_files.txt"
        BadFiles(path).add([(f"/data/{n}.jpg", f"reason {n}") for n in names])
    lines = path.read_text(encoding="utf-8", errors="surrogateescape").split("\n")
    assert lines[-1] == "" and len(lines) == len(names) + 1 and all(ln.count("\t") == 1 for ln in lines[:-1])


# ---- (b) image bytes -------------------------------------------------------------------------------------

def _seed_files() -> list[bytes]:
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (23, 31, 3), dtype=np.uint8))
    out = []
    for img, fmt, kw in ((rgb, "JPEG", {"quality": 80}), (rgb.convert("L"), "JPEG", {}),
                         (rgb.convert("CMYK"), "JPEG", {}), (rgb, "JPEG", {"progressive": True}),
                         (rgb, "PNG", {}), (rgb.convert("RGBA"), "PNG", {}), (rgb.convert("P"), "PNG", {}),
                         (rgb.convert("I;16"), "PNG", {}), (rgb, "GIF", {}), (rgb, "BMP", {}), (rgb, "TIFF", {}),
                         (rgb, "TIFF", {"compression": "tiff_deflate"}), (rgb, "WEBP", {}), (rgb, "PPM", {})):
        buf = io.BytesIO()
        img.save(buf, fmt, **kw)
        out.append(buf.getvalue())
    return out


SEEDS = _seed_files()


@st.composite
def image_bytes(draw) -> bytes:
    kind = draw(st.sampled_from(["seed", "truncate", "flip", "insert", "header", "random", "empty"]))
    if kind == "random":
        return draw(st.binary(max_size=600))
    if kind == "empty":
        return b""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    if kind == "truncate":
        return bytes(data[: draw(st.integers(0, len(data)))])
    if kind == "flip":
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    elif kind == "insert":
        at = draw(st.integers(0, len(data)))
        data[at:at] = draw(st.binary(min_size=1, max_size=40))
    elif kind == "header":  # the sizes and tags live in the first bytes: make them lie
        for _ in range(draw(st.integers(1, 4))):
            data[draw(st.integers(0, min(64, len(data) - 1)))] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF]))
    return bytes(data)


@fuzz_settings(500)
@given(files=st.lists(image_bytes(), min_size=1, max_size=6), min_short=st.sampled_from([0, 16, 37]))
def test_fuzz_image_bytes_are_read_or_reported(tmp_path_factory, files, min_short):
    import torch

    from dogcat.data import ImageFiles, decode_image, eval_transform
    from dogcat.data.cache import build

    ran["images"] += 1
    folder = tmp_path_factory.mktemp("fuzz")
    paths = []
    for i, data in enumerate(files):
        p = folder / f"{i}.jpg"  # named .jpg whatever it holds, as downloads are
        p.write_bytes(data)
        paths.append(str(p))
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = 1 << 20  # the documented limit, lowered: a lying header must not allocate gigabytes
    try:
        for p in paths:
            for mode in ("RGB", "L"):
                img, why = decode_image(p, mode, min_short)
                if img is None:
                    assert isinstance(why, str) and why
                else:
                    assert img.dtype == torch.uint8 and img.ndim == 3 and img.shape[0] == (3 if mode == "RGB" else 1)
                    assert min(img.shape[1:]) > 0
        ds = ImageFiles([(p, 0) for p in paths], [str(i) for i in range(len(paths))],
                        eval_transform(32, (0.5,) * 3, (0.25,) * 3), min_short=37)
        for i in range(len(ds)):
            item = ds[i]
            assert (item.image is None) == (item.error is not None)
            assert item.image is None or tuple(item.image.shape) == (3, 32, 32)
        packed = build([(p, 0) for p in paths], folder, folder / "cache", 37, 32, "f" * 64, workers=1, progress=False)
        assert set(packed.rows) | set(packed.bad) == {Path(p).name for p in paths}
        assert not set(packed.rows) & set(packed.bad)
        assert packed.pixels.shape == (len(packed.rows), 37, 37, 3)
    finally:
        Image.MAX_IMAGE_PIXELS = old


# ---- (c) manifests of valid JSON, any types (issue 21): a value or one MalformedFile, never a TypeError ------

json_values = st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False)
                           | st.text(max_size=8), lambda kids: st.lists(kids, max_size=3)
                           | st.dictionaries(st.text(max_size=6), kids, max_size=3), max_leaves=6)
MANIFEST_KEYS = ["format", "run", "status", "start_time", "start_unix", "end_time", "duration_s", "exit", "pid",
                 "pid_start", "command", "cwd", "seed", "split_seed", "git", "first_start_time", "previous_sessions",
                 "data", "devices", "versions", "host", "platform", "splits", "device", "pip_freeze"]
manifest_values = st.one_of(json_values, st.fixed_dictionaries(
    {}, optional={k: json_values for k in ("commit", "dirty", "sha256", "source", "kind", "code", "error", "cuda",
                                           "duration_s", "status", "count")}),
    st.lists(st.fixed_dictionaries({}, optional={"duration_s": json_values, "status": json_values}), max_size=3))


@pytest.fixture(scope="module")
def a_run(tmp_path_factory) -> Path:
    """A run folder with a config.yaml and the manifest dogcat writes; the fuzz test replaces its values."""
    from dogcat.config import to_yaml
    from dogcat.tracking.manifest import Manifest

    run = tmp_path_factory.mktemp("fuzz-manifest") / "runs" / "r"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(to_yaml(load_config({})))
    Manifest(run).start(load_config({}))
    (run / "manifest.base").write_text((run / "manifest.json").read_text())
    return run


@fuzz_settings(200)
@given(fields=st.dictionaries(st.sampled_from(MANIFEST_KEYS), manifest_values, min_size=1, max_size=4))
def test_fuzz_manifest_types_read_or_one_malformed_file(a_run, fields):
    import json

    from dogcat.io import MalformedFile
    from dogcat.tracking import listing
    from dogcat.tracking.manifest import read_manifest

    ran["manifests"] += 1
    base = json.loads((a_run / "manifest.base").read_text())
    (a_run / "manifest.json").write_text(json.dumps({**base, **fields}))
    try:
        read_manifest(a_run)
    except MalformedFile as e:
        assert "manifest" in str(e) and "\n" not in str(e)
        return
    info = listing.load_run(a_run)  # everything runs, runs show, runs diff and the report compute from it
    listing.show(a_run), listing.summary(info), listing.manifest_summary(info.manifest), info.duration(), info.data()
    listing.diff(a_run, a_run)


# ---- (d) credentials in URIs are masked wherever they sit in a line (issue 21 item 3) -----------------------

SECRET_CHARS = string.ascii_letters + string.digits + "-._~!$&'()*+,;=%"


@fuzz_settings(300)
@given(scheme=st.sampled_from(["http", "https", "postgresql", "mysql+pymysql", "sqlite"]),
       user=st.text(SECRET_CHARS, max_size=8).filter(lambda u: ":" not in u),
       password=st.text(SECRET_CHARS, min_size=6, max_size=16), before=st.text(max_size=10).filter(lambda t: "@" not in t),
       rest=st.sampled_from(["", "/", ":5000", "/db?x=1", "/path with space"]))
def test_fuzz_no_password_survives_redact(scheme, user, password, before, rest):
    from dogcat.console import redact

    ran["uris"] += 1
    line = f"{before}--mlflow-uri={scheme}://{user}:{password}@host{rest}"
    assert f":{password}@" not in redact(line) and ":***@host" in redact(line)


def test_fuzz_counts():
    """Say how many cases the fuzz tests ran (shown with -rA or -s; the numbers are in the report of issue 14)."""
    print(f"fuzz cases run: {ran}")
