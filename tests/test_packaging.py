"""Packaging: the sdist and wheel a pip user gets (``python -m build``), what they hold, that ``twine check`` passes,
the release workflow's shape, and pip's plan in someone else's environment (their torch stays; a CPU-only torch
pulls nothing of CUDA). The slow test installs the wheel into a fresh virtualenv and runs ``dogcat demo`` from a
folder that is not the repository."""

from __future__ import annotations

import email
import email.policy
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import yaml

import dogcat
from dogcat.config import builtin

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["src", "pyproject.toml", "README.md", "LICENSE", "MANIFEST.in", "Makefile", "constraints.txt", "tests",
           "bench", "docs", "mkdocs.yml"]
NAME = f"dogcat_vision-{dogcat.__version__}"
HAS_BUILD = importlib.util.find_spec("build") is not None
needs_build = pytest.mark.skipif(not HAS_BUILD, reason="python -m build: the [dev] extra installs it")


def source_copy(dst: Path, pyproject: str | None = None) -> Path:
    """The files the sdist is made of, copied (no caches, no egg-info, no runs): builds never touch the tree."""
    junk = shutil.ignore_patterns("__pycache__", "*.egg-info", ".pytest_cache", "runs", "build", "dist")
    for name in SOURCES:
        src = ROOT / name
        (shutil.copytree(src, dst / name, ignore=junk) if src.is_dir() else shutil.copy(src, dst / name))
    if pyproject is not None:
        (dst / "pyproject.toml").write_text(pyproject)
    return dst


def metadata(text: str) -> email.message.Message:
    return email.message_from_string(text, policy=email.policy.compat32)


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> dict[str, Path]:
    """The sdist, and the wheel built from it, as ``python -m build`` makes them (without network isolation:
    the build backend is the installed setuptools)."""
    if not HAS_BUILD:
        pytest.skip("python -m build: the [dev] extra installs it")
    tmp = tmp_path_factory.mktemp("dist")
    r = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(tmp / "dist"),
                        str(source_copy(tmp / "tree"))], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return {"wheel": tmp / "dist" / f"{NAME}-py3-none-any.whl", "sdist": tmp / "dist" / f"{NAME}.tar.gz"}


def wheel_metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as z:
        return metadata(z.read(f"{NAME}.dist-info/METADATA").decode())


def test_wheel_carries_what_a_pip_user_needs(dist):
    with zipfile.ZipFile(dist["wheel"]) as z:
        names = set(z.namelist())
        entry_points = z.read(f"{NAME}.dist-info/entry_points.txt").decode()
        license_text = z.read(f"{NAME}.dist-info/licenses/LICENSE").decode()
    assert "dogcat/py.typed" in names  # PEP 561: the type hints count for the user's type checker
    recipes = {n.split("/")[-1][: -len(".yaml")] for n in names if n.startswith("dogcat/recipes/")}
    assert recipes == set(builtin.names()) and {"fashion-mnist", "dogs-vs-cats"} <= recipes
    assert "dogcat = dogcat.cli:main" in entry_points and "dogcat-vision = dogcat.cli:main" in entry_points
    assert license_text.startswith("MIT License") and "Copyright (c) 2026 the dogcat authors" in license_text
    meta = wheel_metadata(dist["wheel"])
    assert meta["Name"] == "dogcat-vision" and meta["Version"] == dogcat.__version__
    assert meta["License-Expression"] == "MIT"
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL"))
    assert urls["Homepage"] == "https://github.com/dogcat-vision/dogcat" and {"Issues", "Documentation"} <= set(urls)
    classifiers = meta.get_all("Classifier")
    assert "Typing :: Typed" in classifiers and "Programming Language :: Python :: 3.11" in classifiers
    assert meta["Description-Content-Type"] == "text/markdown"


def test_sdist_holds_the_sources_and_what_checks_them(dist):
    with tarfile.open(dist["sdist"]) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    assert {"LICENSE", "README.md", "pyproject.toml", "Makefile", "constraints.txt", "src/dogcat/py.typed",
            "src/dogcat/recipes/fashion-mnist.yaml", "tests/test_packaging.py", "bench/data.py", "mkdocs.yml",
            "docs/index.md", "tests/test_docs.py"} <= names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_long_description_links_nothing_outside_the_package(dist):
    """PyPI shows the README: a relative link or image there points nowhere (or to a file it does not have)."""
    body = wheel_metadata(dist["wheel"]).get_payload()
    assert "## Install" in body  # it is the README
    targets = re.findall(r"\]\(([^)\s]+)", body) + re.findall(r"""(?:src|href)=["']([^"']+)""", body)
    assert targets, "no links found: the pattern broke"
    relative = [t for t in targets if not re.match(r"(https?://|#|mailto:)", t)]
    assert relative == []
    assert re.findall(r"(?<!\.)\.\./\S*", body) == []  # no path out of the package (`.../best.pt` is prose)


@pytest.mark.skipif(not importlib.util.find_spec("twine"), reason="twine: the [dev] extra installs it")
def test_twine_check_passes(dist):
    r = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", str(dist["wheel"]), str(dist["sdist"])],
                       capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.count("PASSED") == 2, r.stdout + r.stderr


def requirements(meta: email.message.Message) -> dict[str | None, set[str]]:
    """``{extra or None: {requirement name, ...}}`` of a wheel's Requires-Dist lines."""
    out: dict[str | None, set[str]] = {}
    for line in meta.get_all("Requires-Dist"):
        m = re.search(r"""extra == ["']([^"']+)["']""", line)
        name = re.match(r"[A-Za-z0-9._-]+(\[[^\]]*\])?", line).group(0)
        out.setdefault(m.group(1) if m else None, set()).add(name.lower())
    return out


def test_extras_all_is_every_optional_feature_and_opencv_is_one(dist):
    reqs = requirements(wheel_metadata(dist["wheel"]))
    assert not any(n.startswith("opencv") for n in reqs[None])  # a speed path only: the [fast] extra
    assert reqs["fast"] == {"opencv-python-headless"}
    assert reqs["mlflow"] == {"mlflow"}  # the full one: the SQLite store (SQLAlchemy, Alembic) and `mlflow ui`
    (everything,) = reqs["all"]
    features = set(everything[len("dogcat-vision["):-1].split(","))
    assert features == set(reqs) - {None, "all", "dev"} and {"export", "explain", "mlflow", "wandb", "sweep",
                                                             "fast"} <= features
    assert "dogcat-vision[all]" in reqs["dev"] and {"build", "twine", "pytest"} <= reqs["dev"]


def test_release_workflow_builds_checks_and_publishes():
    """It cannot run here (GitHub's runners, PyPI's trusted publishing): its shape is checked, and its version
    step is run."""
    flow = yaml.safe_load((ROOT / ".github" / "workflows" / "release.yml").read_text())
    trigger = flow.get("on", flow.get(True))  # YAML 1.1 reads a bare `on` as true
    assert trigger == {"push": {"tags": ["v*"]}}
    build, publish = flow["jobs"]["build"], flow["jobs"]["publish"]
    runs = "\n".join(step.get("run", "") for step in build["steps"])
    assert "python -m build" in runs and "twine check --strict dist/*" in runs
    assert "--index-url https://download.pytorch.org/whl/cpu" in runs  # the README's CPU path, then the wheel
    assert any(step.get("uses", "").startswith("actions/upload-artifact") for step in build["steps"])
    assert publish["needs"] == "build" and publish["permissions"] == {"id-token": "write"}
    assert publish["environment"]["name"] == "pypi"
    assert [s["uses"] for s in publish["steps"]][-1] == "pypa/gh-action-pypi-publish@release/v1"
    (version_step,) = [s["run"] for s in build["steps"] if "GITHUB_REF_NAME" in s.get("run", "")]
    for tag, ok in ((f"v{dogcat.__version__}", True), ("v0.0.0", False)):
        r = subprocess.run(["bash", "-ec", version_step], cwd=ROOT, env={**os.environ, "GITHUB_REF_NAME": tag},
                           capture_output=True, text=True)
        assert (r.returncode == 0) == ok, (tag, r.stdout, r.stderr)


# --- pip's plan in someone else's environment ------------------------------------------------------------------

def fake_env(path: Path, dists: dict[str, tuple[str, list[str]]]) -> Path:
    """A virtualenv whose site-packages *says* it has these distributions ({name: (version, requirements)}):
    metadata only, no code, enough for pip's resolver, which decides from installed metadata what it would
    install or replace."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    site = next(path.glob("lib/python*/site-packages"))
    for name, (version, requires) in dists.items():
        info = site / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                                       + "".join(f"Requires-Dist: {r}\n" for r in requires))
        (info / "INSTALLER").write_text("pip\n")
        (info / "RECORD").write_text("")
    return path / "bin" / "python"


def wheel_of(tmp: Path, pin_torch: str) -> Path:
    """Our wheel with torch pinned as the package once declared it, built without its dependencies by pip."""
    text = (ROOT / "pyproject.toml").read_text().replace('"torch>=2.6,<3"', f'"torch=={pin_torch}"')
    tree = source_copy(tmp / "tree", text)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp / "wheel"), str(tree)], check=True, capture_output=True)
    return next((tmp / "wheel").glob("dogcat_vision-*.whl"))


def plan(python: Path, wheel: Path, report: Path, *pip_args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """What ``pip install WHEEL`` would install into the environment of ``python`` (a dry run, no download)."""
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--dry-run", "--report",
                        str(report), *pip_args, str(wheel)], capture_output=True, text=True)
    names = [i["metadata"]["name"].lower() for i in json.loads(report.read_text())["install"]] \
        if r.returncode == 0 else []
    return r, names


@pytest.mark.parametrize("pin", [None, "2.14.1"], ids=["ranges", "old-pin"])
def test_installing_the_wheel_keeps_the_users_torch(tmp_path, pin, dist):
    """pip, asked to install our wheel into an environment with another torch 2.x (and a matching torchvision),
    installs our package alone; a pinned torch, as the package once declared it, would replace theirs."""
    import importlib.metadata as md

    have = {d.metadata["Name"].lower(): (d.version, []) for d in md.distributions() if d.metadata["Name"]}
    have = {n: v for n, v in have.items() if not n.startswith("dogcat")}
    python = fake_env(tmp_path / "env", {**have, "torch": ("2.7.1", []), "torchvision": ("0.22.1", [])})
    r, installs = plan(python, wheel_of(tmp_path, pin) if pin else dist["wheel"], tmp_path / "report.json",
                       "--no-index")
    if pin is None:
        assert r.returncode == 0, r.stderr[-2000:]
        assert installs == ["dogcat-vision"]
    else:  # it would have to fetch and install torch 2.14.1 over the user's 2.7.1
        assert r.returncode != 0 and "depends on torch==2.14.1" in r.stdout + r.stderr, r.stdout + r.stderr


# The CPU wheels' own requirements (download.pytorch.org/whl/cpu): no nvidia-*, no triton
CPU_TORCH = {"torch": ("2.14.1+cpu", ["filelock", "typing-extensions>=4.10.0", "setuptools>=77.0.3", "sympy>=1.13.3",
                                      "networkx>=2.5.1", "jinja2", "fsspec>=0.8.5"]),
             "torchvision": ("0.29.1+cpu", ["numpy", "torch==2.14.1", "pillow!=8.3.*,>=5.3.0"])}
CUDA = re.compile(r"(nvidia-.*|triton|cuda-.*|torch|torchvision)$")


def index_plan(python: Path, wheel: Path, report: Path) -> list[str]:
    """:func:`plan` with pip's configured package index; skips when no index answers."""
    r, installs = plan(python, wheel, report)
    if r.returncode != 0 and re.search(r"No matching distribution|Could not find a version|connection",
                                       r.stdout + r.stderr, re.I):
        pytest.skip(f"no package index answers here: {r.stderr.strip().splitlines()[-1]}")
    assert r.returncode == 0, r.stderr[-2000:]
    return installs


def test_a_cpu_torch_installed_first_keeps_cuda_out(tmp_path, dist):
    """The README's CPU path: torch and torchvision from PyTorch's CPU index first, then our wheel. pip (with its
    package index) plans every other dependency (timm's included), and nothing of torch, CUDA or OpenCV."""
    installs = index_plan(fake_env(tmp_path / "cpu", CPU_TORCH), dist["wheel"], tmp_path / "cpu.json")
    assert {"dogcat-vision", "timm", "numpy", "simplejpeg"} <= set(installs)
    assert [n for n in installs if CUDA.match(n) or n.startswith("opencv")] == []


@pytest.mark.slow  # 30-40 s: pip reads the metadata of torch and its CUDA wheels
def test_without_a_torch_pip_plans_the_cuda_build(tmp_path, dist):
    """The control of the test above: into an empty environment, pip plans torch and torchvision, and on Linux
    x86_64 (where PyPI's torch is the CUDA build) the nvidia-* wheels with them."""
    control = index_plan(fake_env(tmp_path / "empty", {}), dist["wheel"], tmp_path / "empty.json")
    assert {"torch", "torchvision"} <= set(control)
    if sys.platform == "linux" and platform.machine() == "x86_64":
        assert len([n for n in control if n.startswith("nvidia-")]) >= 10, control


# --- a fresh virtualenv -----------------------------------------------------------------------------------------

@pytest.mark.slow  # ~2-3 minutes and ~5.5 GB (a CUDA torch from the pip cache or local wheels), deleted after
@needs_build
def test_the_wheel_in_a_fresh_venv_runs_the_demo_from_any_folder(tmp_path):
    """No --system-site-packages and no PYTHONPATH: the wheel and its dependencies (the versions of
    constraints.txt) in a new virtualenv, then `dogcat recipes` and a one-epoch `dogcat demo` in an empty folder
    elsewhere: the recipe comes from the package, the run folder goes to ./runs there."""
    r = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path / "dist"),
                        str(source_copy(tmp_path / "tree"))], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    try:
        subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", str(venv)], check=True,
                       env=env)
        r = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "-c",
                            str(ROOT / "constraints.txt"), str(tmp_path / "dist" / f"{NAME}-py3-none-any.whl")],
                           capture_output=True, text=True, env=env)
        assert r.returncode == 0, r.stderr[-3000:]
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        where = subprocess.run([str(venv / "bin" / "python"), "-c", "import dogcat; print(dogcat.__file__)"],
                               cwd=elsewhere, capture_output=True, text=True, env=env, check=True).stdout
        assert where.startswith(str(venv)), where  # the installed wheel, not the sources
        recipes = subprocess.run([str(venv / "bin" / "dogcat"), "recipes"], cwd=elsewhere, capture_output=True,
                                 text=True, env=env)
        assert recipes.returncode == 0 and "fashion-mnist" in recipes.stdout, recipes.stderr
        demo = subprocess.run([str(venv / "bin" / "dogcat"), "demo", "--max-epoch=1"], cwd=elsewhere,
                              capture_output=True, text=True, env=env)
        assert demo.returncode == 0, demo.stderr[-3000:]
        assert "Fashion-MNIST test accuracy" in demo.stdout and "predictions" in demo.stdout
        (run,) = (elsewhere / "runs").glob("demo-fashion-mnist*")
        assert {"config.yaml", "submission.csv", "test_result.json", "samples"} <= {p.name for p in run.iterdir()}
    finally:
        shutil.rmtree(venv, ignore_errors=True)  # 5 GB: not left for pytest's kept temp folders
