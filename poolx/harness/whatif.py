"""What if: the same program on several backends and worker counts, side by side.

``poolx profile run --backends serial,processes --workers 1,2,4 train.py``
runs the program once per setting (``program.settings``), each in a fresh
interpreter with its files in ``out/<backend>-x<workers>/``, then writes at
the top of ``out``:

- ``results.json`` (``"kind": "whatif"``): each setting's figures, read from
  its own results.json, and the verdicts;
- ``report.html``: the settings side by side, the verdicts, links to each
  setting's own report;

and prints a short table and the verdicts.  The baseline of every speed-up is
the serial setting when there is one, else the first setting given.

Shares are of the worker time (seconds summed over the executors' processes,
as the scenario reports count them): ``busy`` is the share spent in tasks,
``startup``, ``transfer`` (pickling, unpickling and tasks in transit) and
``idle`` what the rest went to.  ``CPU / wall`` is the CPU seconds of the
driver and every worker per second of the program's wall time: about 1 on
threads means the GIL let one thread run at a time.
"""

from __future__ import annotations

import html as _html
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import env
from .profile import SCHEMA
from .report import ratio, seconds, table

#: A speed-up within this of 1 is "no gain": whole programs run twice on a busy
#: machine differ by several percent.  Lower: gains that do not repeat are claimed.
NOISE = 0.10
#: A cost is named as what eats the parallel gain when it takes at least this
#: share of the worker time: below it, it is not worth a user's attention.
NOTABLE_SHARE = 0.15
#: Threads whose program kept about one CPU busy (this range of CPU-seconds per
#: second of wall time), on more than one worker, were serialized: by the GIL, for
#: Python code.  Below it the program waits (I/O, sleeps), which the GIL does not
#: explain; above it, threads did run at once.
GIL_CPU_PER_WALL = (0.7, 1.3)
#: Workers in tasks at least this share of their time, using less than STARVED_CPU of a
#: CPU each, did not compute for most of it: they waited, or shared the CPUs with other work.
BUSY_WORKERS = 0.5
STARVED_CPU = 0.6
#: The buckets counted as transfer: the cost of moving a task's data, either way.
TRANSFER = ("pickle", "unpickle", "transfer")
#: The costs that are not the program's work, and what to do about each.
COSTS = {
    "startup": "starting the worker processes (reuse one executor, or give it more work per start)",
    "transfer": "moving arguments and results (pickling, unpickling, tasks in transit: send big inputs "
                "once, batch small tasks with chunksize)",
    "idle": "workers waiting for work (too few tasks, or uneven ones)",
}


def run_all(plan: Any, run_setting: Callable[..., tuple[int, dict[str, Any] | None]]) -> int:
    """Run every setting of ``plan`` (``program.Plan``); write and print the comparison; the first
    non-zero exit code, else 0."""
    outcomes: list[tuple[Any, int, dict[str, Any] | None]] = []
    for setting in plan.settings:
        print(f"poolx profile run: {setting.label} ...", file=sys.stderr, flush=True)
        code, results = run_setting(plan, setting, plan.out / setting.label, summary=False)
        outcomes.append((setting, code, results))
        if code == 130:  # Ctrl-C: the user wants to stop, not the next setting
            break
    rows = [row(setting, code, results) for setting, code, results in outcomes]
    combined = combine(plan.title, plan.program, rows)
    (plan.out / "results.json").write_text(json.dumps(combined, indent=1, default=str), encoding="utf-8")
    (plan.out / "report.html").write_text(html(combined), encoding="utf-8")
    print(terminal(combined, plan.out), file=sys.stderr)
    return next((code for _, code, _ in outcomes if code != 0), 0)


def row(setting: Any, code: int, results: dict[str, Any] | None) -> dict[str, Any]:
    """One setting's figures, from its results.json (None: it wrote none)."""
    out: dict[str, Any] = {"label": setting.label, "backend": setting.backend, "workers": setting.workers,
                           "folder": setting.label, "exit_code": code, "wall": None}
    if results is None:
        return out
    program, summary = results.get("program", {}), results.get("summary", {})
    buckets = summary.get("buckets", {})
    lane_time = sum(buckets.values())
    wall = program.get("wall")
    out.update(
        wall=wall,
        used=results.get("config", {}).get("backend"),
        tasks=summary.get("tasks", 0),
        lanes=summary.get("lanes", 0),
        busy_share=summary.get("busy_share"),
        shares={
            "startup": _share(buckets.get("startup", 0.0), lane_time),
            "transfer": _share(sum(buckets.get(b, 0.0) for b in TRANSFER), lane_time),
            "idle": _share(buckets.get("idle", 0.0), lane_time),
        },
        cpu_per_wall=summary["cpu_total"] / wall if wall and summary.get("cpu_total") is not None else None,
        imbalance=summary.get("imbalance"),
        max_parallelism=summary.get("max_parallelism"),
    )
    return out


def _share(part: float, whole: float) -> float | None:
    return part / whole if whole > 0 else None


def combine(title: str, program: list[str], rows: list[dict[str, Any]]) -> dict[str, Any]:
    base = baseline(rows)
    for r in rows:
        ok = base is not None and r["wall"] and base["wall"]
        r["speedup"] = base["wall"] / r["wall"] if ok and base is not None else None
    return {
        "schema": SCHEMA,
        "kind": "whatif",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": title,
        "env": env.collect(),
        "program": {"argv": program},
        "baseline": base["label"] if base is not None else None,
        "settings": rows,
        "verdicts": verdicts(rows),
    }


def baseline(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The serial setting that ran to the end, else the first one that did."""
    done = [r for r in rows if r["wall"] and r["exit_code"] == 0]
    return next((r for r in done if r["backend"] == "serial"), done[0] if done else None)


def verdicts(rows: list[dict[str, Any]]) -> list[str]:
    """Sentences with figures: failures, whether parallelism pays and how much, what eats the rest."""
    out = [f"{r['label']} failed (exit code {r['exit_code']})" + ("" if r["wall"] else ", and wrote no "
           "results") for r in rows if r["exit_code"] != 0]
    base = baseline(rows)
    others = [r for r in rows if r is not base and r["wall"] and r["exit_code"] == 0]
    # (a one-worker setting beating the baseline is not parallelism: it is noise or warm caches)
    parallel = [r for r in others if _parallel(r)]
    if base is None or not parallel:
        return [*out, "nothing to compare: no setting with more than one worker ran to the end beside "
                "the baseline"] + [c for r in others for c in _costs(r)]
    best = min(parallel, key=lambda r: r["wall"])
    gain = base["wall"] / best["wall"]
    if gain < 1 + NOISE:
        out.append(f"parallelism does not pay for this program: the fastest setting with more than one "
                   f"worker, {best['label']}, "
                   f"took {seconds(best['wall'])} against {seconds(base['wall'])} for {base['label']} "
                   f"({gain:.2f}x)")
    else:
        ideal = best.get("workers") or best.get("max_parallelism") or best.get("lanes")
        of_ideal = f", {gain / ideal:.0%} of the ideal {ideal}x" if ideal and ideal > 1 else ""
        out.append(f"parallelism pays: {best['label']} took {seconds(best['wall'])}, {gain:.2f}x "
                   f"faster than {base['label']} ({seconds(base['wall'])}){of_ideal}")
    base_cpu = base.get("cpu_per_wall")
    if (base.get("used") or base["backend"]) == "serial" and base_cpu is not None and base_cpu < STARVED_CPU:
        out.append(f"{base['label']} used only {base_cpu:.2f} CPU-seconds per second: the program waits "
                   "(I/O, sleeps), or other work held the CPUs; if that, the speed-ups compare runs that got "
                   "different shares of the machine: rerun it on a quieter one")
    for r in others:
        out.extend(_costs(r))
    return out


def _parallel(r: dict[str, Any]) -> bool:
    """Whether the setting could run tasks at once: more than one worker, not serial."""
    count = r.get("workers") or r.get("max_parallelism") or 0
    return (r.get("used") or r["backend"]) != "serial" and count > 1


def _costs(r: dict[str, Any]) -> list[str]:
    """What eats this setting's parallel gain, each with its figure."""
    found: list[str] = []
    if r.get("used") and r["backend"] and r["used"] != r["backend"]:
        found.append(f"{r['label']}: the program's executors ran on {r['used']}: an executor that names its "
                     "backend keeps it (--backends sets only the default, POOLX_BACKEND)")
    workers = r.get("workers") or r.get("lanes") or 0
    cpu = r.get("cpu_per_wall")
    threads = (r.get("used") or r["backend"]) == "threads"
    if threads and workers > 1 and cpu is not None and GIL_CPU_PER_WALL[0] <= cpu < GIL_CPU_PER_WALL[1]:
        found.append(f"{r['label']}: the GIL: {workers} threads used {cpu:.2f} CPU-seconds per second of "
                     "wall time, so one ran at a time; Python code needs the processes backend")
    busy = r.get("busy_share")
    if (not threads and workers > 1 and cpu is not None and busy is not None and busy >= BUSY_WORKERS
            and cpu < STARVED_CPU * workers):
        found.append(f"{r['label']}: {workers} workers busy {busy:.0%} of their time used only {cpu:.2f} "
                     "CPU-seconds per second: the tasks wait (I/O, sleeps, locks), or other work holds "
                     "the machine's CPUs")
    if r.get("tasks") is not None and 0 < r["tasks"] < workers:
        found.append(f"{r['label']}: more workers than tasks: {r['tasks']} task(s) for {workers} workers, "
                     "so some never had work")
    for cost, why in COSTS.items():
        share = (r.get("shares") or {}).get(cost)
        if share is not None and share >= NOTABLE_SHARE:
            found.append(f"{r['label']}: {cost} took {share:.0%} of the worker time: {why}")
    if r.get("imbalance"):
        found.append(f"{r['label']}: load imbalance: {r['imbalance']}")
    return found


HEADERS = ["setting", "exit", "wall", "speed-up", "busy", "start-up", "transfer", "idle", "CPU / wall",
           "tasks"]


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def cells(r: dict[str, Any]) -> list[str]:
    shares = r.get("shares") or {}
    cpu = r.get("cpu_per_wall")
    return [r["label"], str(r["exit_code"]), seconds(r["wall"]), ratio(r.get("speedup")),
            _pct(r.get("busy_share")), _pct(shares.get("startup")), _pct(shares.get("transfer")),
            _pct(shares.get("idle")), "-" if cpu is None else f"{cpu:.2f}", str(r.get("tasks", "-"))]


def terminal(results: dict[str, Any], out: Path) -> str:
    lines = ["", f"what if: {results['command']} (speed-up over {results['baseline'] or '-'}; one run "
             f"each: differences under {NOISE:.0%} are noise)",
             table(HEADERS, [cells(r) for r in results["settings"]]), "", "verdicts"]
    lines += [f"  - {v}" for v in results["verdicts"]]
    lines.append(f"\nfiles in {out}/: report.html (the settings side by side), results.json; each "
                 "setting's own report in its folder")
    return "\n".join(lines)


def html(results: dict[str, Any]) -> str:
    esc = _html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in HEADERS) + "<th></th>"
    longest = max((r["wall"] or 0.0 for r in results["settings"]), default=0.0)
    body = ""
    for r in results["settings"]:
        row_cells = cells(r)
        name = esc(r["label"])
        link = f'<a href="{esc(r["folder"])}/report.html">{name}</a>' if r["wall"] else name
        # (the wall times as bars: the settings' order of speed at a glance)
        width = 100 * (r["wall"] or 0.0) / longest if longest else 0.0
        bar = f'<div class="bar" style="width:{width:.1f}%"></div>'
        body += ("<tr><td>" + link + "</td>" + "".join(f"<td>{esc(c)}</td>" for c in row_cells[1:])
                 + f'<td class="barcell">{bar}</td></tr>\n')
    findings = "".join(f"<li>{esc(v)}</li>" for v in results["verdicts"])
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(results['command'])}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; max-width: 70em; }}
table {{ border-collapse: collapse; }}
th, td {{ padding: 0.3em 0.8em; border-bottom: 1px solid #ddd; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
td.barcell {{ width: 16em; text-align: left; }}
div.bar {{ height: 0.9em; background: #2b8cbe; }}
</style></head><body>
<h1>What if: {esc(results['command'])}</h1>
<p>{esc(results['created'])}; {esc(env.header(results['env']))}</p>
<h2>Verdicts</h2>
<ul class="verdicts">{findings}</ul>
<h2>The settings side by side</h2>
<p>Speed-up over {esc(str(results['baseline'] or '-'))}; each setting ran once, so differences under
{NOISE:.0%} are noise.  Busy, start-up, transfer and idle are shares of the
worker time (seconds summed over the executors' processes); CPU / wall is the CPU seconds of the driver and
the workers per second of wall time.  Each setting's name opens its own report.</p>
<table class="whatif"><thead><tr>{head}</tr></thead>
<tbody>
{body}</tbody></table>
</body></html>
"""
