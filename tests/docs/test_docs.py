"""The documentation: every ```python block runs, and the site builds strictly.

Each page's ```python blocks (docs/*.md and README.md) are concatenated in
order into one script, written to a temporary ``.py`` file and run as
``__main__`` in a fresh interpreter, as a user would run them: workers started
with spawn or forkserver import that file, which is why examples keep their
work under ``if __name__ == "__main__":``.  Blocks with another info string
(```text, ```bash, ```console, ```toml) are shown, not run.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

import poolx
from poolx.backends import Backend, get_backend

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
# Seconds a page's examples may take (each page is meant to take well under 5 s).
RUN_TIMEOUT = 60
# Info strings whose blocks are run.
RUNNABLE = {"python", "py"}


def _pages() -> list[Path]:
    pages = sorted(DOCS.rglob("*.md"))
    if (ROOT / "README.md").exists():
        pages.append(ROOT / "README.md")
    return pages


class Block(NamedTuple):
    line: int  # 1-based line, in the markdown file, of the block's first code line
    source: str


_FENCE = re.compile(r"^(?P<indent> {0,3}|[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")


def python_blocks(text: str) -> list[Block]:
    """The runnable code blocks of a markdown text, dedented, in order.

    Handles fences of backticks or tildes of any length (a block ends at a
    fence of the same character at least as long), and blocks indented inside
    admonitions or lists.
    """
    lines = text.splitlines()
    blocks = []
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        words = opening["info"].strip().strip("{}").split()
        lang = words[0].lstrip(".").lower() if words else ""
        body = []
        j = i + 1
        while True:
            if j == len(lines):
                raise ValueError(f"the code block opened at line {i + 1} is never closed")
            stripped = lines[j].strip()
            if stripped and set(stripped) == {fence[0]} and len(stripped) >= len(fence):
                break
            line = lines[j]
            body.append(line[len(indent):] if line.startswith(indent) else line.lstrip())
            j += 1
        if lang in RUNNABLE:
            blocks.append(Block(i + 2, "\n".join(body) + "\n"))
        i = j + 1
    return blocks


def _script(page: Path, blocks: list[Block]) -> tuple[str, list[int]]:
    """The page's blocks as one script, and the script line where each block starts."""
    parts, starts, line = [], [], 1
    for block in blocks:
        header = f"# ---- {page.name}, line {block.line} ----\n"
        parts.append(header)
        line += 1
        starts.append(line)
        parts.append(block.source + "\n\n")
        line += block.source.count("\n") + 2
    return "".join(parts), starts


def _failing_block(stderr: str, script: Path, starts: list[int]) -> int | None:
    """Index of the block holding the innermost traceback line in ``script``."""
    lines = [int(n) for n in re.findall(rf'File "{re.escape(str(script))}", line (\d+)', stderr)]
    if not lines:
        return None
    return max(i for i, start in enumerate(starts) if start <= lines[-1])


def _numbered(source: str, first: int) -> str:
    return "\n".join(f"{first + k:4d} | {text}" for k, text in enumerate(source.splitlines()))


def _run(script: Path, cwd: Path) -> tuple[int | None, str, str]:
    """Run ``script``; on timeout, dump its threads, kill its process group, return None."""
    proc = subprocess.Popen(
        [sys.executable, "-X", "faulthandler", str(script)], cwd=cwd,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # its workers and forkserver share its process group
    )
    try:
        out, err = proc.communicate(timeout=RUN_TIMEOUT)
        return proc.returncode, out, err
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)  # faulthandler prints every thread's stack
        try:
            out, err = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            out, err = "", ""
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        return None, out, err


@pytest.mark.timeout(RUN_TIMEOUT + 30)
@pytest.mark.parametrize("page", _pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_page_examples_run(page: Path, tmp_path: Path) -> None:
    blocks = python_blocks(page.read_text(encoding="utf-8"))
    if not blocks:
        pytest.skip(f"{page.name} has no ```python blocks")
    source, starts = _script(page, blocks)
    script = tmp_path / (re.sub(r"\W", "_", page.stem) + "_examples.py")
    script.write_text(source, encoding="utf-8")

    rc, out, err = _run(script, cwd=tmp_path)

    if rc == 0 and "Traceback (most recent call last)" not in err:
        return
    where = _failing_block(err, script, starts)
    if where is None:
        shown = "\n\n".join(_numbered(b.source, b.line) for b in blocks)
        culprit = f"{page.name} (could not tell which block; all of them, by markdown line):"
    else:
        shown = _numbered(blocks[where].source, blocks[where].line)
        culprit = f"the block at {page.name} line {blocks[where].line}:"
    status = f"timed out after {RUN_TIMEOUT} s" if rc is None else f"exited with {rc}"
    if rc == 0:
        status = "exited with 0 but printed a traceback"
    pytest.fail(
        f"the examples of {page.relative_to(ROOT)} {status}; {culprit}\n\n{shown}\n\n"
        f"--- stdout ---\n{out}\n--- stderr ---\n{err}",
        pytrace=False,
    )


@pytest.mark.timeout(180)
def test_mkdocs_build_strict(tmp_path: Path) -> None:
    for module, package in (("mkdocs", "mkdocs"), ("material", "mkdocs-material")):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{package} is not installed (pip install -e '.[docs]')")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
         str(ROOT / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=150,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},  # mkdocs-material's banner: noise here
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stderr}\n{result.stdout}"
    assert (tmp_path / "site" / "index.html").exists()


# -- the pages say what the code does ---------------------------------------------


def _all_docs_text() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in _pages())


def test_every_public_name_is_documented() -> None:
    text = _all_docs_text()
    missing = [n for n in poolx.__all__
               if n != "__version__" and not re.search(rf"\b{re.escape(n)}\b", text)]
    assert not missing, f"public names the docs never mention: {missing}"


def test_every_statistics_field_is_documented() -> None:
    text = (DOCS / "executor.md").read_text(encoding="utf-8")
    names = [f.name for f in dataclasses.fields(poolx.Statistics)] + ["tasks_pending"]
    missing = [n for n in names if f"`{n}`" not in text]
    assert not missing, f"Statistics fields docs/executor.md does not describe: {missing}"


def test_capability_table_matches_the_backends() -> None:
    """docs/backends.md's table of flags says what the built-in backends set."""
    text = (DOCS / "backends.md").read_text(encoding="utf-8")
    header = next(line for line in text.splitlines() if line.startswith("| flag |"))
    columns = [c.strip(" `") for c in header.strip("|").split("|")][2:]
    flags = sorted(n for n in vars(Backend) if n.startswith(("uses_", "supports_", "runs_")))
    documented = {}
    for line in text.splitlines():
        row = re.match(r"\| `(\w+)` \|", line)
        if row and row[1] in flags:
            cells = [c.strip() for c in line.strip().strip("|").split("|")][2:]
            documented[row[1]] = dict(zip(columns, cells))
    assert sorted(documented) == flags, "the table must list every capability flag"
    for flag, row in documented.items():
        for name, cell in row.items():
            actual = "yes" if getattr(get_backend(name), flag) else "no"
            assert cell == actual, f"docs/backends.md says {name}.{flag} is {cell}; it is {actual}"


# -- the extractor itself ----------------------------------------------------------


def test_python_blocks_extraction() -> None:
    text = "\n".join([
        "intro",
        "```python",          # 2
        "a = 1",              # 3
        "```",
        "```text",
        "not run",
        "```",
        "````python title=\"x.py\"",
        "b = '''",            # 9
        "```",
        "'''",
        "````",
        "!!! note",
        "    ```py",
        "    if a:",          # 15
        "        c = 3",
        "    ```",
        "```bash",
        "pip install .",
        "```",
    ])
    blocks = python_blocks(text)
    assert [b.line for b in blocks] == [3, 9, 15]
    assert blocks[0].source == "a = 1\n"
    assert blocks[1].source == "b = '''\n```\n'''\n"
    assert blocks[2].source == "if a:\n    c = 3\n"
    with pytest.raises(ValueError, match="never closed"):
        python_blocks("```python\nx = 1\n")
