"""``poolx bench``: the benchmark suite, poolx beside whichever peers are installed.

    poolx bench [--peers poolx,loky,ray,dask,...] [--cases a,b,...] [--repeats N]
                [--quick] [--out DIR] [--list]

The suite itself lives once, in the repository's top-level ``benchmarks/``
folder, and is loaded from it by path: ``folders.py`` finds it in a checkout
or among an installed wheel's data files, and ``benchmarks/run.py`` is read as
a module (its public names: the cases, the implementations, the sizes, the
runner and the tables).  Every measurement runs in a fresh subprocess exactly
as ``python benchmarks/run.py`` runs it; this module chooses what to run,
skips the peers that are not installed, and prints and writes a side-by-side
table with ratios (``results.md``, ``results.json``) in a folder of its own:
it never writes into ``benchmarks/``.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from . import folders
from ._args import positive_int

# What an implementation needs beyond the standard library and poolx's own
# dependencies: (module to find, how to install it: the package by its own name,
# which works today; poolx's extra of that name will once poolx is published).
_NEEDS = {
    "ray": ("ray", "pip install ray"),
    "dask": ("distributed", "pip install 'dask[distributed]'"),
    "loky": ("loky", "pip install loky"),
    "joblib": ("joblib", "pip install joblib"),
}
# The pi and transfer cases run numpy, whatever the implementation.
_CASE_NEEDS = {case: ("numpy", "pip install numpy")
               for case in ("pi", "transfer_args", "transfer_returns", "transfer_put",
                            "transfer_args_wall", "transfer_returns_fresh")}
# Shorter spellings accepted by --peers (the names themselves are matched case-insensitively).
_ALIASES = {
    "poolx-fork": "poolx[fork]",
    "ppe": "ProcessPoolExecutor",
    "concurrent.futures": "ProcessPoolExecutor",
    "multiprocessing": "multiprocessing.Pool",
    "mp": "multiprocessing.Pool",
    "distributed": "dask",
}
BASELINE = "poolx"


def load_suite() -> ModuleType:
    """``benchmarks/run.py``, from the checkout beside poolx or from the installed wheel's data files."""
    where = folders.folder("benchmarks", "run.py")
    if where is None:
        raise RuntimeError("the benchmark suite is not installed (no benchmarks/run.py in a checkout nor "
                           "among poolx's installed files); reinstall poolx")
    return folders.load_file(where / "run.py", "poolx_bench_run")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--peers", metavar="A,B,...",
                        help="implementations to run, poolx included (default: every installed one; "
                             "--list shows them)")
    parser.add_argument("--cases", metavar="A,B,...", help="cases to run (default: all; --list shows them)")
    parser.add_argument("--repeats", type=positive_int, default=None, metavar="N",
                        help="fresh-process repeats of every measurement (default 5, --quick 1)")
    parser.add_argument("--quick", action="store_true",
                        help="the suite's smaller sizes (about 10x smaller), 1 repeat unless --repeats: a "
                             "smoke test")
    parser.add_argument("--out", metavar="DIR",
                        help="folder for results.md and results.json (default: a new "
                             "./poolx-bench-<timestamp>)")
    parser.add_argument("--list", action="store_true", help="list the cases and peers, then exit")


# -- choosing what to run --------------------------------------------------------


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing_peer(impl: str) -> str | None:
    """Why ``impl`` cannot run here (with how to install it), or None."""
    if impl in _NEEDS and not installed(_NEEDS[impl][0]):
        module, hint = _NEEDS[impl]
        return f"{module} is not installed ({hint})"
    if impl == "bare-fork" and not hasattr(os, "fork"):
        return "needs os.fork, which this platform lacks"
    return None


def missing_case(case: str) -> str | None:
    if case in _CASE_NEEDS and not installed(_CASE_NEEDS[case][0]):
        module, hint = _CASE_NEEDS[case]
        return f"needs {module}, which is not installed ({hint})"
    return None


class UsageError(Exception):
    """A bad --peers / --cases / --repeats / --out: the message says what is valid."""


def pick(text: str | None, known: list[str], what: str, aliases: dict[str, str]) -> list[str]:
    """The names in comma-separated ``text`` (all of ``known`` when empty), in ``known``'s order."""
    if not text:
        return list(known)
    lookup = {name.lower(): name for name in known}
    lookup.update({alias: name for alias, name in aliases.items()})
    chosen, unknown = set(), []
    for word in (w.strip() for w in text.split(",")):
        if not word:
            continue
        name = lookup.get(word.lower())
        if name is None:
            unknown.append(word)
        else:
            chosen.add(name)
    if unknown:
        raise UsageError(f"unknown {what}{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}; "
                         f"valid {what}s: {', '.join(known)}")
    if not chosen:
        raise UsageError(f"no {what} given; valid {what}s: {', '.join(known)}")
    return [name for name in known if name in chosen]


def plan(suite: ModuleType, args: argparse.Namespace) -> tuple[list[str], list[str], list[str]]:
    """(cases, implementations, notes): what will run, and one line per thing left out."""
    case_names = list(suite.CASE_IMPLS)
    impl_names = list(suite.IMPLS)
    cases = pick(args.cases, case_names, "case", {})
    impls = pick(args.peers, impl_names, "peer", _ALIASES)
    notes = []
    for case in list(cases):
        why = missing_case(case)
        if why:
            notes.append(f"skipping case {case}: {why}")
            cases.remove(case)
    explicit = bool(args.peers)
    for impl in list(impls):
        runs = [c for c in case_names if impl in suite.CASE_IMPLS[c]]
        relevant = [c for c in cases if c in runs]
        why = missing_peer(impl)
        if why or not relevant:
            impls.remove(impl)
        # A peer left out is named when asked for, or when it would have run a chosen case.
        if why and (explicit or relevant):
            notes.append(f"skipping {impl}: {why}")
        elif not relevant and explicit:
            notes.append(f"skipping {impl}: it runs none of the chosen cases (it runs {', '.join(runs)})")
    return cases, impls, notes


def output_dir(suite: ModuleType, out: str | None) -> Path:
    """The folder the results go to; never the suite's own folder (its RESULTS.md is the reference run)."""
    if out:
        path = Path(out)
        if path.resolve() == Path(suite.HERE).resolve():
            raise UsageError(f"--out {out} is the benchmark suite's own folder: poolx bench never "
                             "overwrites its RESULTS.md; give another folder")
        if path.exists() and not path.is_dir():
            raise UsageError(f"--out {out} exists and is not a folder")
        return path
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path(f"poolx-bench-{stamp}")
    n = 1
    while path.exists():
        n += 1
        path = Path(f"poolx-bench-{stamp}-{n}")
    return path


# -- the side-by-side table ----------------------------------------------------------


def side_by_side(suite: ModuleType, summary: dict[str, Any], impls: list[str]) -> dict[str, Any]:
    """Per case: unit, direction, each implementation's median (or why none), and poolx / each median."""
    table: dict[str, Any] = {}
    for case, rows in summary.items():
        _title, unit, higher = suite.CASE_INFO[case]
        entry: dict[str, Any] = {"unit": unit, "higher_is_better": higher, "medians": {}, "missing": {},
                                 "poolx_over": {}}
        base = rows.get(BASELINE, {}).get("median")
        for impl in impls:
            row = rows.get(impl)
            if row is None:
                continue
            if "median" in row:
                entry["medians"][impl] = row["median"]
                if base is not None and impl != BASELINE and row["median"]:
                    entry["poolx_over"][impl] = base / row["median"]
            else:
                entry["missing"][impl] = ", ".join(row["failures"]) or "no data"
        table[case] = entry
    return table


def header_lines(env: dict[str, Any], repeats: int, quick: bool, have_baseline: bool) -> list[str]:
    cores = env["usable_cpus"]
    lines = [
        f"{cores} usable CPU core{'s' if cores != 1 else ''} (os.cpu_count() = {env['cpu_count']}); "
        f"pools of {env['workers']} workers (retrieve, actor_retrieve: {env['retrieve_workers']}); "
        f"{repeats} repeat(s), {'quick' if quick else 'full'} sizes; Python {env['python']}; "
        f"poolx {env['poolx']}.",
        "Each cell: the median of the repeats, in the case's unit.",
    ]
    if have_baseline:
        lines += ["[r] = poolx median / this peer's median (the direction of benchmarks/run.py's ratios: "
                  "the row's median over the peer's).",
                  "Where higher is better (/s), r > 1 means poolx is ahead; where lower is better "
                  "(ms, us, s), r < 1 means poolx is ahead."]
    else:
        lines.append("No poolx column (not among --peers), so no ratios.")
    return lines


def table_rows(suite: ModuleType, table: dict[str, Any], impls: list[str]) -> list[list[str]]:
    shown = [i for i in impls if any(i in e["medians"] or i in e["missing"] for e in table.values())]
    rows = [["case", "unit", "better", *shown]]
    for case, entry in table.items():
        unit = entry["unit"]
        cells = [case, unit, "higher" if entry["higher_is_better"] else "lower"]
        for impl in shown:
            if impl in entry["medians"]:
                cell = suite.fmt(entry["medians"][impl], unit)
                if impl in entry["poolx_over"]:
                    cell += f" [{suite.ratio_text(entry['poolx_over'][impl])}]"
            elif impl in entry["missing"]:
                cell = entry["missing"][impl].upper()
            else:
                cell = "-"  # does not run this case
            cells.append(cell)
        rows.append(cells)
    return rows


def text_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def markdown_table(rows: list[list[str]]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    head = [f"**{c}**" if c == BASELINE else c for c in rows[0]]
    return "\n".join([line(head), "|" + "---|" * len(head), *(line(r) for r in rows[1:])])


# -- the command ---------------------------------------------------------------------


def list_suite(suite: ModuleType, quick: bool) -> None:
    sizes = suite.QUICK if quick else suite.FULL
    print("cases (default: all):")
    width = max(len(case) for case in suite.CASE_IMPLS)  # (the columns line up, whatever the names)
    for case, (title, unit, higher) in suite.CASE_INFO.items():
        if case not in suite.CASE_IMPLS:
            continue
        why = missing_case(case)
        better = f"{'higher' if higher else 'lower'} is better"
        print(f"  {case:<{width}} {unit:<12} {better:<17} "
              f"{title.format(**sizes)}" + (f"  [{why}]" if why else ""))
    print("peers (default: every installed one):")
    for impl in suite.IMPLS:
        runs = [c for c in suite.CASE_IMPLS if impl in suite.CASE_IMPLS[c]]
        why = missing_peer(impl)
        state = f"not available: {why}" if why else "available"
        print(f"  {impl:<21} runs {', '.join(runs)}  [{state}]")


def run(args: argparse.Namespace) -> int:
    suite = load_suite()
    if args.list:
        list_suite(suite, args.quick)
        return 0
    try:
        cases, impls, notes = plan(suite, args)
        out_dir = output_dir(suite, args.out)
    except UsageError as exc:
        print(f"poolx bench: error: {exc}", file=sys.stderr)
        return 2
    for note in notes:
        print(f"poolx bench: {note}")
    cases = [c for c in cases if any(i in suite.CASE_IMPLS[c] for i in impls)]
    if not cases:
        print("poolx bench: error: nothing to run: none of the chosen peers that can run here runs any "
              "of the chosen cases (--list shows which peer runs which case)", file=sys.stderr)
        return 2
    repeats = args.repeats or (suite.QUICK_REPEATS if args.quick else suite.DEFAULT_REPEATS)
    out_dir.mkdir(parents=True, exist_ok=True)  # before the run: a folder that cannot be made fails now

    env = suite.environment()
    count = repeats * sum(len([i for i in suite.CASE_IMPLS[c] if i in impls]) for c in cases)
    print(f"poolx bench: {', '.join(cases)} on {', '.join(impls)}: {count} measurement(s), "
          f"{env['usable_cpus']} usable CPU cores; results go to {out_dir}/", flush=True)
    t0 = time.perf_counter()
    records = suite.run_all(cases, impls, repeats, args.quick, None, 0.0)
    total = time.perf_counter() - t0
    env["load_average_at_end"] = " ".join(f"{x:.2f}" for x in suite.load_average())
    sizes = suite.QUICK if args.quick else suite.FULL
    command = ["poolx bench", f"--peers {','.join(impls)}", f"--cases {','.join(cases)}",
               f"--repeats {repeats}", *(["--quick"] if args.quick else [])]
    config = {"command": " ".join(command), "quick": args.quick, "repeats": repeats, "cases": cases,
              "impls": impls, "skipped": notes, "wait_idle_s": 0.0, "sizes": sizes,
              "timeouts_s": {c: suite.CASE_TIMEOUT_S[c] for c in cases}, "total_s": total}
    summary = suite.summarise(records, cases)
    goal_rows = suite.goals(summary, env["usable_cpus"])
    table = side_by_side(suite, summary, impls)
    have_baseline = BASELINE in impls
    header = header_lines(env, repeats, args.quick, have_baseline)
    rows = table_rows(suite, table, impls)

    out_json = out_dir / "results.json"
    out_md = out_dir / "results.md"
    data = {"environment": env, "config": config, "side_by_side": table, "goals": goal_rows,
            "summary": summary, "measurements": records}
    out_json.write_text(json.dumps(data, indent=2) + "\n")
    details = suite.markdown(env, config, summary, goal_rows, records)
    section = "\n".join(["## Side by side", "", *(f"{h}  " for h in header), "", markdown_table(rows), ""])
    at = details.find("\n## Environment")
    text = details[:at + 1] + section + details[at:] if at >= 0 else section + "\n" + details
    out_md.write_text(text)

    print()
    print(f"poolx bench: side by side ({total:.0f} s)")
    for line in header:
        print(line)
    print()
    print(text_table(rows))
    for note in notes:
        print(f"({note})")
    print()
    print(f"wrote {out_md} and {out_json}")
    failed = sorted({f"{r['case']}/{r['impl']}: {r['status']}" for r in records
                     if r["impl"].startswith(BASELINE) and r["status"] not in ("ok", "skipped")})
    if failed:
        print(f"poolx bench: poolx measurement(s) failed: {'; '.join(failed)} (see {out_md})",
              file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="poolx bench", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
