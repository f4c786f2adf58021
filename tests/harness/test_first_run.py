"""What a newcomer meets first: the README's and the first docs pages' commands,
``poolx --version``, the command's errors, ``poolx profile compare``, and
report.html in a browser (issue 21, item 8)."""

from __future__ import annotations

import ast
import html
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import poolx
from poolx.cli import main
from poolx.harness import analyze, env, report
from poolx.harness.measure import BUCKETS, Lane

ROOT = Path(__file__).resolve().parents[2]
#: The pages a newcomer reads first (the README's "Try it", then the site's first pages).
FIRST_PAGES = ["README.md", "docs/getting-started.md", "docs/index.md", "docs/profiling.md"]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """``poolx ARGV`` in this process: (exit status, stdout, stderr); argparse's exits count."""
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


# -- the install lines ---------------------------------------------------------------


def _extras() -> dict[str, list[str]]:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {"": project["dependencies"], **project["optional-dependencies"]}


def _distributions(requirements: list[str]) -> set[str]:
    return {re.match(r"[A-Za-z0-9_.-]+", r).group(0).lower() for r in requirements}


def _install_lines(text: str) -> list[str]:
    return re.findall(r"pip install [^\n`]*", text)


def _poolx_extras(line: str) -> list[str]:
    """The extras of poolx a pip install line names: ".[a,b]", "-e .[a]", "poolx[a]"."""
    found = re.findall(r"""(?:^|[\s"'])(?:\.|poolx|/[^\s"'\[]*)\[([^\]]*)\]""", line)
    return [e.strip() for group in found for e in group.split(",")]


def test_every_install_line_in_the_docs_names_an_extra_that_exists():
    extras = _extras()
    pages = ["README.md", *(str(p.relative_to(ROOT)) for p in sorted((ROOT / "docs").rglob("*.md")))]
    wrong = [
        (page, line, extra)
        for page in pages
        for line in _install_lines((ROOT / page).read_text())
        for extra in _poolx_extras(line)
        if extra not in extras
    ]
    assert not wrong, wrong


@pytest.mark.parametrize("page", FIRST_PAGES)
def test_the_first_pages_install_from_the_checkout_until_poolx_is_published(page):
    # poolx is not on the package index yet: `pip install "poolx[x]"` fails there
    # ("No matching distribution found for poolx").  Each install line must work
    # from a clone (".[x]").
    by_name = [line for line in _install_lines((ROOT / page).read_text()) if re.search(r"poolx\[", line)]
    assert not by_name, f"{page}: {by_name}"


def _imports(source: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n != "poolx"}


#: An import name whose distribution is named otherwise.
DISTRIBUTION = {"sklearn": "scikit-learn"}


def test_every_readme_example_runs_after_the_install_lines_before_it():
    # The README's main install line (its first bash block) gives what every
    # example may import; an example that needs more says so just above it.
    extras = _extras()
    text = (ROOT / "README.md").read_text()
    main_install = _install_lines(re.search(r"```bash\n(.*?)```", text, re.S).group(1))[0]
    base = _distributions(extras[""] + [r for e in _poolx_extras(main_install) for r in extras[e]])
    examples = list(re.finditer(r"```python\n(.*?)```", text, re.S))
    assert examples
    previous_end = 0
    for match in examples:
        prose = text[previous_end:match.start()]
        previous_end = match.end()
        given = set(base)
        for line in _install_lines(prose):
            given |= _distributions([r for e in _poolx_extras(line) for r in extras[e]])
        needed = {DISTRIBUTION.get(m, m).lower() for m in _imports(match.group(1))}
        assert needed <= given, (
            f"the README example starting {match.group(1)[:60]!r} imports {sorted(needed - given)}, "
            "which no install line before it installs"
        )


# -- the command ---------------------------------------------------------------------


def test_poolx_version_prints_the_version(capsys):
    code, out, err = run_cli(capsys, "--version")
    assert code == 0 and err == ""
    assert out.strip() == f"poolx {poolx.__version__}"
    proc = subprocess.run([sys.executable, "-m", "poolx", "--version"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == f"poolx {poolx.__version__}", proc.stderr


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["demo", "--samples", "-1"], "--samples"),
        (["demo", "--samples", "0"], "--samples"),
        (["demo", "--samples", "lots"], "--samples"),
        (["demo", "--workers", "0"], "--workers"),
        (["demo", "--workers", "-2"], "--workers"),
        (["profile", "pi", "--size", "0"], "--size"),
        (["profile", "pi", "--size", "-5"], "--size"),
        (["profile", "pi", "--repeat", "0"], "--repeat"),
        (["profile", "pi", "--workers", "0,2"], "--workers"),
        (["profile", "pi", "--workers", "two"], "--workers"),
        (["bench", "--repeats", "0"], "--repeats"),
    ],
)
def test_a_count_below_one_is_refused_naming_its_flag(capsys, tmp_path, monkeypatch, argv, flag):
    monkeypatch.chdir(tmp_path)  # (a profile run that went ahead would write here)
    code, out, err = run_cli(capsys, *argv)
    assert code == 2, (argv, out, err)
    assert f"argument {flag}:" in err, err
    assert "Traceback" not in err and out == ""  # refused before any work
    assert list(tmp_path.iterdir()) == []


def test_profile_out_naming_a_file_is_one_error_line(capsys, tmp_path):
    existing = tmp_path / "notes.txt"
    existing.write_text("mine")
    code, _, err = run_cli(capsys, "profile", "pi", "--out", str(existing), "--repeat", "1")
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert str(existing) in err and "not a folder" in err, err
    assert existing.read_text() == "mine"
    code, _, err = run_cli(capsys, "profile", "pi", "--out", str(existing / "sub"), "--repeat", "1")
    assert code == 2 and err.count("\n") == 1 and str(existing / "sub") in err, err


@pytest.mark.parametrize(
    "source, says",
    [
        ("SIZE = 3\ndef serial(size:\n    return 1\n", ["syntax error", "line 2", "py_compile"]),
        ("SIZE = 3\n1 / 0\n", ["ZeroDivisionError", "line 2"]),
        ("import no_such_module_anywhere\nSIZE = 3\n", ["'no_such_module_anywhere'", "not installed"]),
    ],
)
def test_a_scenario_that_fails_to_load_is_one_error_line(capsys, tmp_path, source, says):
    path = tmp_path / "mine.py"
    path.write_text(source)
    code, out, err = run_cli(capsys, "profile", str(path), "--out", str(tmp_path / "out"))
    assert code == 2, (out, err)
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("poolx profile: error: scenario") and str(path) in err, err
    for needle in says:
        assert needle in err, (needle, err)


def test_a_bug_in_poolx_while_loading_a_scenario_keeps_its_traceback(capsys, tmp_path, monkeypatch):
    from poolx.harness import folders

    def broken(path, name):
        raise KeyError("a bug in poolx")

    monkeypatch.setattr(folders, "load_file", broken)
    path = tmp_path / "fine.py"
    path.write_text("SIZE = 3\ndef serial(size):\n    return 1\n")
    with pytest.raises(KeyError, match="a bug in poolx"):
        main(["profile", str(path), "--out", str(tmp_path / "out")])


# -- poolx profile compare -----------------------------------------------------------


def _results(tmp_path: Path, name: str, rows: dict[str, tuple[float, float, float, int]]) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    data = {
        "schema": "poolx.profile/1",
        "created": "2026-01-01T00:00:00+0000",
        "scenario": {"name": "pi", "doc": "", "size": 1000},
        "rows": [
            {"key": key, "wall": w, "wall_min": lo, "wall_max": hi, "repeats": n, "errors": []}
            for key, (w, lo, hi, n) in rows.items()
        ],
    }
    (folder / "results.json").write_text(json.dumps(data))
    return folder


def _verdicts(out: str) -> dict[str, str]:
    return {line.split()[0] + (" " + line.split()[1] if line.split()[1].startswith("x") else ""): line
            for line in out.splitlines() if re.match(r"(serial|task x|actor x)", line)}


def test_compare_shows_every_row_of_both_runs(capsys, tmp_path):
    a = _results(tmp_path, "a", {"serial": (1.0, 1.0, 1.0, 1), "task x1": (1.0, 1.0, 1.0, 1),
                                 "task x2": (0.6, 0.6, 0.6, 1)})
    b = _results(tmp_path, "b", {"serial": (1.0, 1.0, 1.0, 1), "task x2": (0.6, 0.6, 0.6, 1),
                                 "actor x2": (0.7, 0.7, 0.7, 1)})
    code, out, err = run_cli(capsys, "profile", "compare", str(a), str(b))
    assert code == 0, err
    rows = _verdicts(out)
    assert set(rows) == {"serial", "task x1", "task x2", "actor x2"}, out
    assert rows["task x1"].rstrip().endswith("only in A"), out
    assert rows["actor x2"].rstrip().endswith("only in B"), out


def test_compare_calls_a_single_run_difference_only_beyond_the_noise_threshold(capsys, tmp_path):
    a = _results(tmp_path, "a", {"serial": (1.00, 1.00, 1.00, 1), "task x2": (1.00, 1.00, 1.00, 1),
                                 "actor x2": (1.00, 1.00, 1.00, 1)})
    b = _results(tmp_path, "b", {"serial": (0.99, 0.99, 0.99, 1), "task x2": (0.80, 0.80, 0.80, 1),
                                 "actor x2": (1.25, 1.25, 1.25, 1)})
    code, out, _ = run_cli(capsys, "profile", "compare", str(a), str(b))
    assert code == 0
    rows = _verdicts(out)
    assert "within noise" in rows["serial"] and "faster" not in rows["serial"], out  # 1%
    assert "faster" in rows["task x2"], out  # 20%
    assert "slower" in rows["actor x2"], out  # 25%


def test_compare_with_repeats_judges_by_the_spread(capsys, tmp_path):
    a = _results(tmp_path, "a", {"task x2": (1.00, 0.95, 1.10, 3), "actor x2": (1.00, 0.99, 1.01, 3)})
    b = _results(tmp_path, "b", {"task x2": (0.90, 0.85, 0.96, 3), "actor x2": (0.97, 0.965, 0.975, 3)})
    code, out, _ = run_cli(capsys, "profile", "compare", str(a), str(b))
    assert code == 0
    rows = _verdicts(out)
    assert "within noise" in rows["task x2"], out  # 10% apart, but the ranges overlap
    assert "faster" in rows["actor x2"], out  # 3% apart, every B run faster than every A run
    code, out, _ = run_cli(capsys, "profile", "compare", "--help")
    from poolx.harness.compare import SINGLE_RUN_NOISE  # (new with the rule)

    assert code == 0 and "do not overlap" in out and f"{SINGLE_RUN_NOISE:.0%}" in out


# -- report.html in a browser ----------------------------------------------------------

#: Measures, in the browser, what a reader can see: appended to a copy of the report.
LAYOUT_JS = """<script>
(() => {
  const scrolls = el => ['auto', 'scroll'].includes(getComputedStyle(el).overflowX);
  const out = {page: document.documentElement.scrollWidth, window: document.documentElement.clientWidth,
               tables: []};
  for (const t of document.querySelectorAll('table')) {
    let box = t;
    while (box !== document.body && !scrolls(box)) box = box.parentElement;
    const right = box === document.body ? out.window : box.getBoundingClientRect().right;
    const cells = [...t.querySelectorAll('td')].map(td => td.getBoundingClientRect().right);
    out.tables.push({cls: t.className, scroller: box !== document.body,
                     clipped: box === document.body ? t.scrollWidth > out.window
                                                    : box.scrollWidth > box.clientWidth,
                     cellsOut: cells.filter(r => r > right + 1).length});
  }
  document.body.setAttribute('data-layout', JSON.stringify(out));
})();
</script>"""


def _report(tmp_path: Path) -> Path:
    """A report.html of made-up rows, with the environment of a deep virtualenv."""
    environment = env.collect()
    environment["executable"] = "/home/someone/" + "/".join(["a-rather-long-folder-name"] * 12) + "/python3"
    lanes = [Lane(i, f"worker {i}", 4000 + i, 0.01, 0.5, 70_000_000, 8, dict.fromkeys(BUCKETS, 0.1))
             for i in range(2)]
    rows = [analyze.Row("serial", 1, 3, 1.0, 0.98, 1.2, 1.0, 1.0, per_lane=lanes[:1])]
    for mode in ("task", "actor"):
        rows.append(analyze.Row(mode, 2, 3, 0.6, 0.55, 0.7, 1.67, 0.83, 16, 26.7, 0.05, 0.1, 0.0006, 0.95,
                                70_000_000, 480, 320, 2, dict.fromkeys(BUCKETS, 0.2), lanes))
    results = {
        "env": environment, "scenario": {"name": "pi", "doc": "made up", "size": 100_000_000},
        "config": {"backend": "processes", "address": None, "repeat": 3},
        "created": "2026-01-01T00:00:00+0000", "command": "poolx profile pi",
        "verdicts": ["fastest: task x2"], "profiles": {}, "profiled": [],
    }
    page = tmp_path / "report.html"
    page.write_text(report.html(results, rows, []).replace("</body>", LAYOUT_JS + "</body>"))
    return page


def _layout(page: Path, width: int) -> dict:
    from _browser import load_page

    result = load_page(page, width=width)
    assert result.console_errors == []
    found = re.search(r'data-layout="([^"]*)"', result.dom)
    assert found, "the layout script did not run"
    return json.loads(html.unescape(found.group(1)))


# matplotlib (drawing the report's charts in this process) keeps its font files open
# for the life of the process: matplotlib's, not poolx's.
@pytest.mark.leaks("fds")
@pytest.mark.timeout(120)
def test_report_tables_show_every_value_or_scroll(tmp_path):
    from _browser import require_browser

    require_browser()
    page = _report(tmp_path)
    for width in (1200, 800):  # a laptop, half a screen
        layout = _layout(page, width)
        assert layout["page"] <= layout["window"], layout  # the page itself never scrolls sideways
        tables = {t["cls"]: t for t in layout["tables"]}
        # The environment's values wrap: each one is on screen, none past the right edge.
        assert tables["environment"]["cellsOut"] == 0 and not tables["environment"]["clipped"], layout
        for t in layout["tables"]:  # a table wider than the window scrolls inside its box
            assert t["scroller"] or not t["clipped"], (width, t)
    wide = _layout(page, 1600)  # a wide window: the widest table fits, nothing cut at 1100 px
    assert not [t for t in wide["tables"] if t["clipped"] or t["cellsOut"]], wide


# -- the output folders ----------------------------------------------------------------


def test_the_commands_output_folders_are_ignored_by_git(tmp_path):
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    for path in ("poolx-profile-pi/report.html", "poolx-profile-squares/results.json",
                 "poolx-bench-20260101-120000/results.md", "poolx-trace.json"):
        proc = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=ROOT, timeout=30)
        assert proc.returncode == 0, f"{path} is not ignored by .gitignore"


def test_getting_started_lists_every_extra():
    text = (ROOT / "docs" / "getting-started.md").read_text()
    text = text[text.index("| extra |"):text.index("## A first program")]  # the table of extras
    listed = {name for cell in re.findall(r"^\| (`[^|]*`) \|", text, re.M)
              for name in re.findall(r"`([^`]+)`", cell)}
    assert listed == set(_extras()) - {""}, listed


@pytest.mark.timeout(60)
def test_bench_list_lines_its_columns_up_whatever_the_case_names(capsys):
    code, out, _ = run_cli(capsys, "bench", "--list")
    assert code == 0
    lines = out[out.index("cases"):out.index("peers")].splitlines()[1:]
    assert len(lines) > 5
    # The unit column starts at one offset on every line (a long case name pushed it right).
    assert len({re.match(r"  \S+ +", line).end() for line in lines}) == 1, lines


@pytest.mark.timeout(120)
def test_retrieve_runs_at_a_size_above_its_six_items(tmp_path):
    # --size 8 failed every mode with "IndexError: list index out of range".
    # (In a subprocess: the report's charts would leave matplotlib's font files open here.)
    proc = subprocess.run(
        [sys.executable, "-m", "poolx", "profile", "retrieve", "--size", "8", "--modes", "serial",
         "--repeat", "1", "--no-progress", "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=100,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "failed" not in proc.stdout and "size 8" in proc.stdout, proc.stdout


def test_profile_pi_without_numpy_stops_before_any_run(capsys, tmp_path, monkeypatch):
    # It ran every mode, each failing on the import, then gave verdicts on the actor rows.
    monkeypatch.setitem(sys.modules, "numpy", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "poolx_builtin_scenario_pi", raising=False)  # (loaded afresh)
    code, out, err = run_cli(capsys, "profile", "pi", "--out", str(tmp_path / "out"))
    assert code == 2 and out == "", out
    assert err.count("\n") == 1 and "needs numpy: pip install numpy" in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind, module", [("cpu", "pyinstrument"), ("mem", "memray")])
def test_a_missing_profiler_names_an_install_that_works_today(capsys, tmp_path, monkeypatch, kind, module):
    # It said "pip install 'poolx[profile]'", which fails while poolx is not on the package index.
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    code, _, err = run_cli(capsys, "profile", "pi", "--profile", kind, "--out", str(tmp_path / "out"))
    assert code == 2 and err.count("\n") == 1, err
    assert f"pip install {module} " in err and "poolx[" not in err, err
