"""What a profiled program shows (``poolx.profile``, ``poolx profile run``): the terminal
summary and report.html.

The parts a scenario's report has too (the timeline chart, the profiles, the
tables' look) come from ``report``; here are the program's own: what ran
(argv, exit code, error), its executors, and each worker's lifetime split
into the buckets of ``measure``.
"""

from __future__ import annotations

import html as _html
import io
from pathlib import Path
from typing import Any

from . import env as _env
from .measure import BUCKET_HELP, BUCKETS, Lane, Run
from .report import (
    CSS,
    MISSING_NOTE,
    PALETTE,
    chart_timelines,
    env_value,
    have_matplotlib,
    profiles_html,
    seconds,
    size,
    table,
    table_html,
)

EXECUTOR_HEADERS = ["executor", "front end", "backend", "workers", "made at", "closed at", "tasks", "failed"]
LANE_HEADERS = ["process", "pid", "tasks", "lifetime", "busy %", "CPU s", "peak mem", *BUCKETS]


def executor_cells(executors: list[dict[str, Any]]) -> list[list[str]]:
    return [[f"ex{ex['index']}", ex["front_end"], ex["backend"], str(ex["max_workers"]),
             seconds(ex["created"]), "still open" if ex["closed"] is None else seconds(ex["closed"]),
             str(ex["tasks"]), str(ex["failed"])] for ex in executors]


def lane_cells(lanes: list[Lane], wall: float) -> list[list[str]]:
    out = []
    for lane in lanes:
        lo, hi = lane.window(wall)
        life = hi - lo
        out.append([lane.label, str(lane.pid or "-"), str(lane.tasks), seconds(life),
                    f"{lane.busy / life:.0%}" if life > 0 else "-",
                    f"{lane.cpu:.2f}" if lane.cpu is not None else "-", size(lane.peak_rss),
                    *(f"{lane.seconds.get(b, 0.0):.3f}" for b in BUCKETS)])
    return out


def program_line(results: dict[str, Any]) -> str:
    p = results["program"]
    code = "-" if p["exit_code"] is None else str(p["exit_code"])
    return (f"wall {seconds(p['wall'])}; exit code {code}; driver CPU {p['driver_cpu']:.2f} s, peak memory "
            f"{size(p['driver_peak_rss'])}; CPU of every process {results['summary']['cpu_total']:.2f} s")


def terminal(results: dict[str, Any], run: Run, out: Path) -> str:
    """The summary a program's run prints: tables, hot functions, verdicts, where the files are."""
    buf = io.StringIO()
    w = buf.write
    w(f"{results['command']}: {' '.join(results['program']['argv'] or [])}\n  {program_line(results)}\n")
    if results["executors"]:
        w("\n" + table(EXECUTOR_HEADERS, executor_cells(results["executors"])) + "\n")
    if run.lanes:
        w("\nper process: its lifetime (its executor's) split into buckets, in seconds\n")
        w(table(LANE_HEADERS, lane_cells(run.lanes, run.wall)) + "\n")
    for info in (results.get("profiles") or {}).values():
        if info["kind"] == "cpu" and info.get("hot"):
            w("\nwhere the CPU time went (cpu profile, every process)\n")
            for h in info["hot"][:5]:
                where = f"  ({h['where']})" if h["where"] else ""
                w(f"  {h['share']:6.1%}  {h['function']}{where}\n")
        if info["kind"] == "mem":
            w("\nmemory (mem profile): each process's peak, and its largest allocation then\n")
        for p in info.get("processes", []) if info["kind"] == "mem" else ():
            w(f"  {p['label']}: peak {size(p.get('peak'))}  {p.get('top_site', p.get('error', ''))}\n")
        for label in info.get("missing", []):
            w(f"  {label} {info.get('missing_note', MISSING_NOTE)}\n")
    w("\nverdicts\n" + "".join(f"  - {v}\n" for v in results["verdicts"]))
    if results["notes"]:
        w("\nnotes\n" + "".join(f"  - {n}\n" for n in results["notes"]))
    w(f"\nfiles in {out}/: report.html (open in a browser), results.json (raw data), trace.json "
      "(open in ui.perfetto.dev)\n")
    return buf.getvalue()


def html(results: dict[str, Any], run: Run) -> str:
    """One self-contained page: inline CSS and SVG, nothing fetched from anywhere."""
    e = _html.escape
    p = results["program"]
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{e(results['command'])}</title><style>{CSS}pre.error{{background:#fff3f3;padding:.5em;"
        "overflow-x:auto}</style></head><body>",
        f"<h1>{e(results['command'])}</h1>",
        "<h2 id='program'>The program</h2>",
        table_html(["", ""], _program_rows(results), "program"),
    ]
    if p["error"]:
        parts.append(f"<pre class='error'>{e(p['error'])}</pre>")
    parts += ["<h2 id='verdicts'>Verdicts</h2><ul class='verdicts'>",
              *(f"<li>{e(v)}</li>" for v in results["verdicts"]), "</ul>"]
    parts += _executors_and_lanes(results, run)
    parts += profiles_html(results)
    if results["notes"]:
        parts += ["<h2 id='notes'>Notes</h2><ul class='notes'>",
                  *(f"<li>{e(n)}</li>" for n in results["notes"]), "</ul>"]
    parts += [
        "<h2 id='files'>Files</h2><ul>",
        "<li><a href='results.json'>results.json</a>: the raw data (every task's record)</li>",
        "<li><a href='trace.json'>trace.json</a>: Chrome/Perfetto trace, one lane per process</li>",
        "</ul><h2 id='environment'>Environment</h2>",
        table_html(["", ""], [[k, env_value(v)] for k, v in results["env"].items()], "environment"),
        "</body></html>",
    ]
    return "\n".join(parts)


def _program_rows(results: dict[str, Any]) -> list[list[str]]:
    p, s = results["program"], results["summary"]
    return [
        ["command", " ".join(p["argv"] or []) or "-"],
        ["exit code", "-" if p["exit_code"] is None else str(p["exit_code"])],
        ["wall", seconds(p["wall"])],
        ["driver", f"{p['driver_cpu']:.2f} s of CPU, peak memory {size(p['driver_peak_rss'])}"],
        ["every process", f"{s['cpu_total']:.2f} s of CPU ({s['cpu_total'] / p['wall']:.2f} CPUs on average)"
         if p["wall"] else "-"],
        ["tasks", f"{s['tasks']:,} on {s['lanes']} worker/actor process(es) or thread(s); at most "
         f"{s['max_parallelism']} at once"],
        ["settings", _settings(results["config"])],
        ["environment", _env.header(results["env"])],
        ["created", results["created"]],
    ]


def _settings(config: dict[str, Any]) -> str:
    asked = "as the program asked"
    return (f"profile {config['profile']}; backend(s) {config['backend'] or '-'}; workers "
            f"{config['workers'] or asked}; start method {config['start_method'] or asked}")


def _executors_and_lanes(results: dict[str, Any], run: Run) -> list[str]:
    e = _html.escape
    if not results["executors"]:
        return ["<h2 id='executors'>Executors</h2><p>The program made no poolx executor.</p>"]
    parts = ["<h2 id='executors'>Executors</h2>",
             table_html(EXECUTOR_HEADERS, executor_cells(results["executors"]), "executors"),
             "<p class='muted'>made at, closed at: seconds after the start; an executor still open when the "
             "profile stopped is counted to the end.</p>",
             "<h2 id='lanes'>Where each process's time went</h2>",
             table_html(LANE_HEADERS, lane_cells(run.lanes, run.wall), "lanes"),
             "<p class='muted'>A process's lifetime is its executor's, from when the program made it to "
             "when it was shut down; it is split into "
             + "; ".join(f"<span class='swatch' style='background:{PALETTE[b]}'></span><b>{b}</b>: "
                         f"{e(BUCKET_HELP[b])}" for b in BUCKETS)
             + ". Per process the six add up to its lifetime.</p>"]
    if not have_matplotlib():
        parts.append("<p class='flag'>The timeline needs matplotlib: pip install matplotlib (poolx's "
                     "'profile' extra).</p>")
    timeline = chart_timelines([run])
    if timeline:
        parts += ["<h2 id='timelines'>Timeline</h2>",
                  f"<div class='chart' id='chart-timelines'>{timeline}</div>",
                  "<p class='muted'>One row per process; a frame: its executor's lifetime. Every task is in "
                  "<a href='trace.json'>trace.json</a> (ui.perfetto.dev or chrome://tracing).</p>"]
    return parts
