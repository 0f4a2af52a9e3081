"""The documentation (README.md, docs/*.md, mkdocs.yml): the site builds with ``mkdocs build --strict`` (no broken
link or anchor, no page left out of the nav); every shell block marked runnable runs, as a user would type it, on
tiny data; every ``dogcat COMMAND --option`` the pages name exists; the README's links name pages that exist.

A runnable block is a ```` ```bash ```` fence right after a line ``<!-- runnable -->``. It runs with ``bash -e`` in a
fresh temporary folder that holds (see :func:`prepare`) ``images/train/{cat,dog}/*.jpg``,
``images/val/{cat,dog}/*.jpg``, ``images/test/*.jpg`` (32x32 JPEGs) and ``fashion-mnist/`` (the four IDX files of
a tiny Fashion-MNIST), with this tree's ``dogcat`` first on PATH; the runs go to ``runs/``. Keep such blocks
tiny (``--max-epoch=1 --image-size=32 --model=smallcnn``, ``--dry-run``): the README's run in ``make test``,
the other pages' in ``make test-all``.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from datagen import make_fmnist_idx, make_folder

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
RUNNABLE = re.compile(r"^<!-- runnable -->[ \t]*\n```bash[ \t]*\n(.*?)^```", re.M | re.S)
FENCE = re.compile(r"^```([a-z]*)[^\n]*\n(.*?)^```", re.M | re.S)
DOCS_URL = "https://github.com/dogcat-vision/dogcat/blob/main/docs/"
HAS_MKDOCS = all(importlib.util.find_spec(m) for m in ("mkdocs", "material"))


def page_name(page: Path) -> str:
    return str(page.relative_to(ROOT))


def runnable_blocks() -> list[tuple[str, int, str]]:
    """``(page, line of the fence, the block's text)`` of every runnable block."""
    out = []
    for page in PAGES:
        text = page.read_text()
        for m in RUNNABLE.finditer(text):
            out.append((page_name(page), text.count("\n", 0, m.start()) + 2, m.group(1)))
    return out


def prepare(folder: Path) -> Path:
    """The tiny data every runnable block finds in its folder."""
    for split, n in (("train", 6), ("val", 3)):
        make_folder(folder / "images" / split, ("cat", "dog"), n_per_class=n, sizes=(32, 32))
    make_folder(folder / "tmp-test", ("x",), n_per_class=4, sizes=(32, 32))
    (folder / "images" / "test").mkdir()
    for i, f in enumerate(sorted((folder / "tmp-test" / "x").glob("*.jpg")), 1):
        f.rename(folder / "images" / "test" / f"{i}.jpg")
    shutil.rmtree(folder / "tmp-test")
    make_fmnist_idx(folder / "fashion-mnist", n_train=200, n_test=50)
    return folder


@pytest.fixture(scope="module")
def data_template(tmp_path_factory) -> Path:
    return prepare(tmp_path_factory.mktemp("docs-data"))


def test_some_blocks_are_runnable():
    """The README's tour at least, so that a changed marker or fence cannot turn the runnable test into none."""
    assert [b for b in runnable_blocks() if b[0] == "README.md"], "README.md has no <!-- runnable --> bash block"


def _marks(page: str) -> list:
    """The README's tour runs in `make test`; the other pages' blocks (each a training or two: 10-30 s) in
    `make test-all`, which keeps `make test` within its few minutes."""
    return [] if page == "README.md" else [pytest.mark.slow]


@pytest.mark.parametrize("page,line,code", [pytest.param(p, n, c, marks=_marks(p), id=f"{p}:{n}")
                                            for p, n, c in runnable_blocks()])
def test_runnable_block(page, line, code, data_template, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(data_template, work)
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # this venv's dogcat
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), *filter(None, [env.get("PYTHONPATH")])])  # this tree
    r = subprocess.run(["bash", "-e", "-c", code], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (f"{page}, the runnable block at line {line}, exited {r.returncode}:\n{code}\n"
                               f"--- its output (the end) ---\n{(r.stdout + r.stderr)[-4000:]}")


@pytest.mark.skipif(not HAS_MKDOCS, reason="mkdocs and mkdocs-material: the [dev] extra installs them")
def test_site_builds_strictly(tmp_path):
    """Strict (mkdocs.yml says so, and the flag): a broken link or anchor, or a page under docs/ that the nav
    leaves out, is an error."""
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
                        "--site-dir", str(tmp_path / "site")], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "WARNING" not in out, out[-4000:]
    assert (tmp_path / "site" / "index.html").is_file() and (tmp_path / "site" / "speed" / "index.html").is_file()


def test_every_page_is_in_the_nav_once():
    """What strict mode reports as a warning, said here in one line (and without mkdocs installed)."""
    def pages(node) -> list[str]:
        if isinstance(node, str):
            return [node]
        items = node.values() if isinstance(node, dict) else node
        return [p for item in items for p in pages(item)]

    nav = pages(yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"])
    on_disk = sorted(p.name for p in DOCS.glob("*.md"))
    assert sorted(nav) == on_disk, f"in the nav, not on disk: {sorted(set(nav) - set(on_disk))}; on disk, not in " \
                                   f"the nav: {sorted(set(on_disk) - set(nav))}"


def test_readme_links_name_pages_that_exist():
    """The README is PyPI's page too, so it links the docs by absolute URL (tests/test_packaging.py: no relative
    links); each such link must name a page of docs/ (and an anchor that page has)."""
    text = README.read_text()
    links = re.findall(re.escape(DOCS_URL) + r"([^)\s#]+)(#[^)\s]*)?", text)
    assert links, "the README links no docs page"
    for name, anchor in links:
        assert (DOCS / name).is_file(), f"README links {DOCS_URL}{name}: no docs/{name}"
        if anchor:
            heads = {slug(h) for h in re.findall(r"(?m)^#+ (.+)$", strip_fences((DOCS / name).read_text()))}
            assert anchor[1:] in heads, f"README links {name}{anchor}: no such heading"


def test_readme_tour_is_the_home_page_tour():
    """The tour is in the README (GitHub, PyPI) and on the site's home page: the same commands in both (the
    README's copy runs, marked runnable; the home page's is the same text without the marker)."""
    def tour(text: str) -> str:
        return text.split("## A 5-minute tour\n", 1)[1].split("\n## ", 1)[0].replace("<!-- runnable -->\n", "")

    assert tour(README.read_text()) == tour((DOCS / "index.md").read_text())


def slug(heading: str) -> str:
    """Python-Markdown's toc slug: lower case, punctuation dropped, spaces to dashes."""
    s = re.sub(r"[^\w\s-]", "", re.sub(r"`", "", heading)).strip().lower()
    return re.sub(r"[-\s]+", "-", s)


def strip_fences(text: str) -> str:
    return FENCE.sub("", text)


# --- every `dogcat COMMAND --option` the pages name exists ---------------------------------------------------------

# Placeholders the pages use for "any option" (`dogcat train [--k=v …]`)
PLACEHOLDERS = {"--k", "--key", "--option"}
# Inline examples of what dogcat refuses
WRONG_ON_PURPOSE = {"dogcat predict RUN x.jpg --lr=1"}
STOP = {"|", "||", "&&", ";", "&", ">", ">>", "<", "2>", "#"}


def command_lines() -> list[tuple[str, str]]:
    """``(page, text)`` of each shell line and inline code span of the pages that may hold a dogcat command."""
    out = []
    for page in PAGES:
        text = page.read_text()
        for m in FENCE.finditer(text):
            lines = m.group(2).replace("\\\n", " ").splitlines()
            if m.group(1) in ("bash", "sh"):
                out += [(page_name(page), line) for line in lines]
            elif m.group(1) in ("", "console"):  # a transcript: its `$ ` lines, but those shown failing on purpose
                out += [(page_name(page), line) for line, after in zip(lines, lines[1:] + [""])
                        if line.startswith("$ ") and "error:" not in after]
        out += [(page_name(page), span) for span in re.findall(r"`([^`\n]+)`", strip_fences(text))
                if span not in WRONG_ON_PURPOSE]
    return out


def dogcat_invocations() -> list[tuple[str, str, list[str]]]:
    """``(page, command, its words up to a pipe, a redirection or a comment)`` of every ``dogcat COMMAND ...``."""
    found = []
    for page, line in command_lines():
        for m in re.finditer(r"(?:^|[\s/$(\"])dogcat ([a-z][a-z-]*)\b(.*)", line):
            rest = m.group(2).replace("\\|", "|").replace("…", " ")
            try:
                words = shlex.split(rest, comments=True)
            except ValueError:  # an unbalanced quote in a table cell: plain words are enough here
                words = rest.split()
            cut = next((i for i, w in enumerate(words) if w in STOP or w.startswith(("#", ">"))), len(words))
            found.append((page, m.group(1), [w.strip("[]()") for w in words[:cut]]))
    return found


def test_commands_and_options_named_in_the_docs_exist():
    from dogcat.cli import COMMANDS
    from dogcat.cli.args import build_parser, canonical

    accepted = {name: {s for a in build_parser(cmd)._actions for s in a.option_strings}
                for name, cmd in COMMANDS.items()}
    invocations = dogcat_invocations()
    assert len(invocations) > 100, "the pattern broke: hardly any `dogcat ...` found in the docs"
    wrong = []
    for page, cmd, words in invocations:
        if cmd not in COMMANDS:
            wrong.append(f"{page}: `dogcat {cmd}`: no such command")
            continue
        for w in words:
            if not w.startswith("--") or w in ("--", "---"):
                continue
            name = w.split("=", 1)[0]
            if name in PLACEHOLDERS or not re.fullmatch(r"--[A-Za-z][\w.-]*", name):
                continue
            if "--" + canonical(name[2:]) not in accepted[cmd]:
                wrong.append(f"{page}: `dogcat {cmd} ... {name}`: `dogcat {cmd}` takes no {name}")
    assert not wrong, "stale docs:\n" + "\n".join(sorted(set(wrong)))


def test_every_command_has_a_row_in_the_commands_page():
    """A rewrite once dropped eight sections, the command table among them, and nothing noticed."""
    from dogcat.cli import COMMANDS

    table = (DOCS / "commands.md").read_text()
    rows = {m.group(1) for m in re.finditer(r"^\| `dogcat ([a-z-]+)", table, re.M)}
    assert set(COMMANDS) <= rows, f"not in docs/commands.md's table: {sorted(set(COMMANDS) - rows)}"
