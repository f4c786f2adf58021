"""What ``poolx profile`` shows: the terminal summary, report.html, trace.json."""

from __future__ import annotations

import dataclasses
import html as _html
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import analyze
from . import env as _env
from .analyze import Row
from .measure import BUCKET_HELP, BUCKETS, Run
from .scenario import Scenario

PALETTE = {
    "startup": "#b0b0b0",
    "unpickle": "#8c6bb1",
    "compute": "#2b8cbe",
    "pickle": "#c994c7",
    "transfer": "#e34a33",
    "idle": "#f0f0f0",
}
MODE_COLOURS = {"serial": "#636363", "task": "#2b8cbe", "actor": "#e6550d"}
#: What the report says of a process that left no profile (processes backend).
MISSING_NOTE = "ended before writing its profile (killed or crashed)"


# -- formatting -----------------------------------------------------------------------


def seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 1:
        return f"{value:.2f} s"
    if value >= 1e-3:
        return f"{value * 1e3:.1f} ms"
    return f"{value * 1e6:.0f} us"


def size(value: float | None) -> str:
    if value is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(value) < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return "-"


def ratio(value: float | None, pct: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:.0%}" if pct else f"{value:.2f}x"


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths)))]
    for r in rows:
        lines.append(
            "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
        )
    return "\n".join(lines)


RESULT_HEADERS = [
    "mode",
    "wall (median)",
    "spread",
    "speedup",
    "efficiency",
    "tasks/s",
    "task p50",
    "task p95",
    "dispatch p50",
    "CPU util",
    "peak mem",
    "pickled out/in",
]


def result_cells(r: Row) -> list[str]:
    return [
        r.key,
        seconds(r.wall),
        f"{seconds(r.wall_min)}..{seconds(r.wall_max)}",
        ratio(r.speedup),
        ratio(r.efficiency, pct=True),
        f"{r.tasks_per_s:,.1f}" if r.tasks else "-",
        seconds(r.task_p50),
        seconds(r.task_p95),
        seconds(r.dispatch_p50),
        ratio(r.cpu_util, pct=True),
        size(r.peak_rss),
        f"{size(r.bytes_out)}/{size(r.bytes_in)}" if r.mode != "serial" else "-",
    ]


ACCOUNT_HEADERS = ["worker-seconds", *BUCKETS, "= wall x processes"]


def account_cells(r: Row) -> list[str]:
    total = sum(r.seconds.values())
    cells = [f"{r.key} ({r.lanes} proc)"]
    cells += [f"{r.seconds.get(b, 0.0):.3f}" for b in BUCKETS]
    cells.append(f"{total:.3f} = {r.wall:.3f} x {r.lanes}" if r.mode != "serial" else f"{total:.3f}")
    return cells


LANE_HEADERS = ["process", "pid", "tasks", "busy %", "ready after", "CPU s", "peak mem"]


def lane_cells(r: Row, wall: float) -> list[list[str]]:
    out = []
    for lane in r.per_lane:
        out.append(
            [
                lane.label,
                str(lane.pid or "-"),
                str(lane.tasks),
                f"{lane.busy / wall:.0%}" if wall else "-",
                seconds(lane.ready),
                f"{lane.cpu:.2f}" if lane.cpu is not None else "-",
                size(lane.peak_rss),
            ]
        )
    return out


def env_header(scenario: Scenario, config: dict[str, Any], environment: dict[str, Any]) -> str:
    lines = [
        f"poolx profile {scenario.name}: {scenario.doc}",
        f"  {_env.header(environment)}",
        f"  size {config['size']:,}; modes {', '.join(config['modes'])}; workers "
        f"{', '.join(map(str, config['workers']))}; backend {config['backend']}"
        + (f" ({config['start_method']})" if config["start_method"] else "")
        + (f" at {config['address']}" if config.get("address") else "")
        + f"; {config['repeat']} timed runs each after a warm-up",
        "  timings come from unprofiled runs; each task/actor run starts a fresh Executor, so its "
        "wall time includes "
        + (
            "connecting to the cluster"
            if config.get("address")
            else "starting the processes"
            + (" (a local cluster)" if config["backend"] in ("dask", "ray") else "")
        ),
    ]
    if config["repeat"] < 3:
        lines.append(
            f"  note: {config['repeat']} timed run(s): too few for a meaningful spread (use 3 or more)"
        )
    if config["profile"] in ("cpu", "mem"):
        lines.append(
            f"  {config['profile']} profiles come from separate runs, one per mode at "
            f"{max(config['workers'])} worker" + ("s" if max(config["workers"]) > 1 else "")
        )
    return "\n".join(lines)


def terminal(rows: list[Row], findings: list[str], profiles: dict[str, Any], out: Path) -> str:
    buf = io.StringIO()
    w = buf.write
    w("\n" + table(RESULT_HEADERS, [result_cells(r) for r in rows]) + "\n")
    w("\nwhere the worker time went (seconds summed over processes; median run)\n")
    w(table(ACCOUNT_HEADERS, [account_cells(r) for r in rows if r.mode != "serial"]) + "\n")
    for r in rows:
        if r.mode == "serial":
            continue
        flag = f"   IMBALANCE: {r.imbalance}" if r.imbalance else ""
        w(f"\nper process, {r.key} (median run){flag}\n")
        w(table(LANE_HEADERS, lane_cells(r, r.wall)) + "\n")
    for mode, info in profiles.items():
        w(f"\n{info['kind']} profile, {mode} x{info['workers']} ({seconds(info['wall'])})\n")
        if info["kind"] == "cpu":
            for h in info.get("hot", [])[:5]:
                where = f"  ({h['where']})" if h["where"] else ""
                w(f"  {h['share']:6.1%}  {h['function']}{where}\n")
        else:
            cells = [
                [p["label"], str(p["pid"]), size(p.get("peak")), p.get("top_site", p.get("error", ""))]
                for p in info["processes"]
            ]
            w(table(["process", "pid", "peak (memray)", "largest allocation at peak"], cells) + "\n")
        for label in info.get("missing", []):
            w(f"  {label} {info.get('missing_note', MISSING_NOTE)}\n")
    w("\nverdicts\n")
    for f in findings:
        w(f"  - {f}\n")
    w(
        f"\nfiles in {out}/: report.html (open in a browser), results.json (raw data; "
        "'poolx profile compare A B'), trace.json (open in ui.perfetto.dev)"
    )
    for info in profiles.values():
        if info.get("html"):
            w(f", cpu/{info['html']}, cpu/{info['speedscope']} (speedscope.app)")
        for p in info.get("processes", []):
            if p.get("flamegraph"):
                w(f", {p['flamegraph']}")
    w("\n")
    return buf.getvalue()


# -- data ------------------------------------------------------------------------------


def row_dict(r: Row) -> dict[str, Any]:
    d = dataclasses.asdict(r)
    d["per_lane"] = [dataclasses.asdict(lane) for lane in r.per_lane]
    d["key"] = r.key
    return d


def run_dict(r: Run) -> dict[str, Any]:
    d = dataclasses.asdict(r)
    d["tasks"] = [
        dict(
            zip(
                (
                    "name",
                    "lane",
                    "submit",
                    "dispatch",
                    "start",
                    "end",
                    "done",
                    "bytes_out",
                    "bytes_in",
                    "ok",
                    "unpickle",
                    "pickle",
                ),
                t,
            )
        )
        for t in r.tasks
    ]
    return d


def run_title(run: Run) -> str:
    """"serial", "task x4", or "program" (a program's run: poolx.harness.session)."""
    return run.mode if run.mode in ("serial", "program") else f"{run.mode} x{run.workers}"


def trace(runs: list[Run], spans: Sequence[tuple[str, float, float]] = ()) -> dict[str, Any]:
    """Chrome/Perfetto trace: one process per run, one thread (lane) per worker
    and actor; a slice per task with nested unpickle / compute / pickle.
    ``spans`` (name, start, end), on a "driver" lane of the first run: a program's
    executors, from when it made each to when it shut it down."""
    events: list[dict[str, Any]] = [
        {"ph": "X", "name": name, "cat": "executor", "pid": 1, "tid": 0, "ts": start * 1e6,
         "dur": max(0.0, end - start) * 1e6} for name, start, end in spans]
    if spans:
        events.append({"ph": "M", "name": "thread_name", "pid": 1, "tid": 0, "args": {"name": "driver"}})
    for pid, run in enumerate(runs, start=1):
        name = run_title(run) + ("" if run.mode == "program" else f" · run {run.repeat + 1}")
        events.append({"ph": "M", "name": "process_name", "pid": pid, "tid": 0, "args": {"name": name}})
        events.append(
            {"ph": "M", "name": "process_sort_index", "pid": pid, "tid": 0, "args": {"sort_index": pid}}
        )
        lanes = {lane.key: i for i, lane in enumerate(run.lanes, start=1)}
        for lane in run.lanes:
            tid = lanes[lane.key]
            label = lane.label + (f" (pid {lane.pid})" if lane.pid else "")
            events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": label}})
            if lane.ready > lane.starting:
                events.append(
                    {
                        "ph": "X",
                        "name": "startup",
                        "cat": "startup",
                        "pid": pid,
                        "tid": tid,
                        "ts": lane.starting * 1e6,
                        "dur": (lane.ready - lane.starting) * 1e6,
                    }
                )
        if run.mode == "serial":
            events.append(
                {
                    "ph": "X",
                    "name": "serial",
                    "cat": "compute",
                    "pid": pid,
                    "tid": 1,
                    "ts": 0.0,
                    "dur": run.wall * 1e6,
                }
            )
        for name, lane_key, submit, _dispatch, start, end, done, b_out, b_in, ok, s_un, s_pi in run.tasks:
            tid = lanes.get(lane_key, 0)
            base = {"pid": pid, "tid": tid}
            events.append(
                {
                    **base,
                    "ph": "X",
                    "name": name,
                    "cat": "task" if ok else "task,failed",
                    "ts": start * 1e6,
                    "dur": (end - start + s_pi) * 1e6,
                    "args": {
                        "ok": ok,
                        "bytes_out": b_out,
                        "bytes_in": b_in,
                        "queued_ms": round((start - submit) * 1e3, 3),
                        "result_back_ms": round((done - end) * 1e3, 3),
                    },
                }
            )
            if s_un > 0:
                events.append(
                    {
                        **base,
                        "ph": "X",
                        "name": "unpickle",
                        "cat": "unpickle",
                        "ts": start * 1e6,
                        "dur": s_un * 1e6,
                    }
                )
            events.append(
                {
                    **base,
                    "ph": "X",
                    "name": "compute",
                    "cat": "compute",
                    "ts": (start + s_un) * 1e6,
                    "dur": max(0.0, end - start - s_un) * 1e6,
                }
            )
            if s_pi > 0:
                events.append(
                    {**base, "ph": "X", "name": "pickle", "cat": "pickle", "ts": end * 1e6, "dur": s_pi * 1e6}
                )
    return {"traceEvents": events, "displayTimeUnit": "ms"}


# -- report.html -----------------------------------------------------------------------


def _svg(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg") :]


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def chart_scaling(rows: list[Row]) -> str | None:
    if not have_matplotlib():
        return None
    parallel = [r for r in rows if r.mode != "serial" and r.speedup is not None]
    if not parallel:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.2))
    workers = sorted({r.workers for r in parallel})
    for mode in ("task", "actor"):
        mine = sorted((r for r in parallel if r.mode == mode), key=lambda r: r.workers)
        if mine:
            ax1.plot(
                [r.workers for r in mine],
                [r.speedup for r in mine],
                "o-",
                label=mode,
                color=MODE_COLOURS[mode],
            )
            ax2.plot(
                [r.workers for r in mine],
                [100 * (r.efficiency or 0) for r in mine],
                "o-",
                label=mode,
                color=MODE_COLOURS[mode],
            )
    ax1.plot(workers, workers, ":", color="#999999", label="ideal")
    ax1.set(xlabel="workers", ylabel="speedup over serial", title="speedup", xticks=workers)
    ax2.axhline(100, ls=":", color="#999999")
    ax2.set(xlabel="workers", ylabel="efficiency (%)", title="efficiency", xticks=workers, ylim=(0, 110))
    ax1.legend(frameon=False)
    fig.tight_layout()
    return _svg(fig)


def chart_accounting(rows: list[Row]) -> str | None:
    if not have_matplotlib():
        return None
    parallel = [r for r in rows if r.mode != "serial"]
    if not parallel:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 0.45 * len(parallel) + 1.2))
    labels = [r.key for r in parallel]
    left = [0.0] * len(parallel)
    for b in BUCKETS:
        widths = [
            100 * r.seconds.get(b, 0.0) / (r.wall * r.lanes) if r.wall and r.lanes else 0 for r in parallel
        ]
        ax.barh(labels, widths, left=left, color=PALETTE[b], label=b, edgecolor="#ffffff", linewidth=0.5)
        left = [x + y for x, y in zip(left, widths)]
    ax.invert_yaxis()
    ax.set(xlabel="share of worker time (%)", xlim=(0, 100))
    ax.legend(
        ncol=len(BUCKETS),
        loc="upper center",
        bbox_to_anchor=(0.5, -0.35 if len(parallel) < 4 else -0.2),
        frameon=False,
        fontsize=8,
    )
    fig.tight_layout()
    return _svg(fig)


def chart_timelines(runs: list[Run]) -> str | None:
    """Gantt per run on one shared time axis; one row per process."""
    if not have_matplotlib():
        return None
    if not runs:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heights = [max(1, len(r.lanes)) for r in runs]
    fig, axes = plt.subplots(
        len(runs),
        1,
        sharex=True,
        figsize=(9, 0.35 * sum(heights) + 0.6 * len(runs) + 0.6),
        gridspec_kw={"height_ratios": heights},
        squeeze=False,
    )
    for ax, run in zip(axes[:, 0], runs):
        lanes = {lane.key: i for i, lane in enumerate(run.lanes)}
        for lane in run.lanes:
            if lane.end is not None:  # a program's executor: its lifetime, as a frame
                lo, hi = lane.window(run.wall)
                ax.broken_barh([(lo, hi - lo)], (lanes[lane.key] - 0.45, 0.9), facecolor="none",
                               edgecolor="#999999", linewidth=0.6)
            if lane.ready > lane.starting:
                ax.broken_barh([(lane.starting, lane.ready - lane.starting)], (lanes[lane.key] - 0.4, 0.8),
                               color=PALETTE["startup"])
        if run.mode == "serial":
            ax.broken_barh([(0, run.wall)], (-0.4, 0.8), color=PALETTE["compute"])
        spans: dict[str, list[tuple[int, tuple[float, float]]]] = {
            "unpickle": [],
            "compute": [],
            "pickle": [],
        }
        for _n, key, _s, _d, start, end, _done, _bo, _bi, _ok, s_un, s_pi in run.tasks:
            row = lanes.get(key, 0)
            spans["unpickle"].append((row, (start, s_un)))
            spans["compute"].append((row, (start + s_un, max(0.0, end - start - s_un))))
            spans["pickle"].append((row, (end, s_pi)))
        for bucket, items in spans.items():
            by_row: dict[int, list[tuple[float, float]]] = {}
            for row, span in items:
                if span[1] > 0:
                    by_row.setdefault(row, []).append(span)
            for row, bars in by_row.items():
                ax.broken_barh(
                    bars, (row - 0.4, 0.8), color=PALETTE[bucket], edgecolor="#ffffff", linewidth=0.3
                )
        ax.axvline(run.wall, color="#333333", lw=0.8, ls="--")
        ax.set_yticks(range(len(run.lanes)), [lane.label for lane in run.lanes], fontsize=7)
        ax.set_ylim(max(1, len(run.lanes)) - 0.5, -0.5)  # (a failed run may have no lanes)
        ax.set_title(f"{run_title(run)}: {run.wall:.3f} s", fontsize=9, loc="left")
    axes[-1, 0].set_xlabel("seconds since the run started (dashed: end of the run)")
    fig.tight_layout()
    return _svg(fig)


CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em 1em;color:#222}
p,ul,h1,h2,h3,.chart{max-width:1100px}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd}
.table-wrap{overflow-x:auto;max-width:100%;margin:.5em 0}
table{border-collapse:collapse;font-size:.85em}
th,td{padding:.25em .6em;border-bottom:1px solid #eee;text-align:right;white-space:nowrap}
th:first-child,td:first-child{text-align:left}th{background:#f6f6f6}
table.environment{max-width:1100px}
table.environment td{text-align:left;vertical-align:top}
table.environment td+td{white-space:normal;overflow-wrap:anywhere}
.flag{color:#b30000;font-weight:600}.muted{color:#777;font-size:.85em}code{background:#f3f3f3;padding:0 .2em}
ul.verdicts li{margin:.3em 0}.chart svg{max-width:100%;height:auto}
.swatch{display:inline-block;width:.9em;height:.9em;margin-right:.3em;vertical-align:middle}
"""


def table_html(headers: list[str], rows: list[list[str]], cls: str) -> str:
    e = _html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows)
    # (in a box of its own that scrolls sideways: a table wider than the window is never cut off)
    return (f'<div class="table-wrap"><table class="{cls}"><thead><tr>{head}</tr></thead>'
            f'<tbody>{body}</tbody></table></div>')


def env_value(value: Any) -> str:
    """An environment fact as the report shows it: a mapping as "name version, ..."
    ("-" for a package that is absent or a variable that is unset)."""
    if isinstance(value, dict):
        return ", ".join(f"{k} {'-' if v is None else v}" for k, v in value.items())
    return str(value)


def profiles_html(results: dict[str, Any]) -> list[str]:
    """The report's profiles section: per profiled run, the hot functions and the processes
    (CPU), or each process's peak and its largest allocation (memory), and links to the files."""
    e = _html.escape
    parts: list[str] = []
    profiles = results.get("profiles") or {}
    if profiles:
        parts.append("<h2 id='profiles'>Profiles</h2>")
        for p in results.get("profiled", []):
            parts.append(
                f"<p>{e(p['mode'])} x{p['workers']}: profiled run {seconds(p['wall'])}, "
                f"{p['wall'] / p['timing_median']:.2f}x its timing median.</p>"
            )
        for mode, info in profiles.items():
            which = "the program" if mode == "program" else f"{e(mode)} x{info['workers']}"
            parts.append(f"<h3>{e(info['kind'])}: {which}</h3>")
            if info["kind"] == "cpu":
                if info.get("html"):
                    parts.append(
                        f"<p><a href='cpu/{e(info['html'])}'>call tree (pyinstrument, every process)</a> · "
                        f"<a href='cpu/{e(info['speedscope'])}'>speedscope JSON</a> "
                        "(one profile per process; open in speedscope.app)</p>"
                    )
                parts.append(
                    table_html(
                        ["share", "function", "where"],
                        [[f"{h['share']:.1%}", h["function"], h["where"]] for h in info.get("hot", [])],
                        "hot",
                    )
                )
                parts.append(
                    table_html(
                        ["process", "samples", "profiled s"],
                        [
                            [p["label"], str(p["samples"]), f"{p['duration']:.3f}"]
                            for p in info.get("processes", [])
                        ],
                        "cpu-processes",
                    )
                )
            else:
                cells = []
                for p in info["processes"]:
                    link = p.get("flamegraph")
                    cells.append(
                        [
                            p["label"],
                            str(p["pid"]),
                            size(p.get("peak")),
                            p.get("top_site", p.get("error", "")),
                            link or "-",
                        ]
                    )
                parts.append(
                    table_html(
                        ["process", "pid", "peak (memray)", "largest allocation at peak", "flamegraph"],
                        cells,
                        "mem",
                    )
                )
                links = [p["flamegraph"] for p in info["processes"] if p.get("flamegraph")]
                if links:
                    parts.append(
                        "<p>" + " · ".join(f"<a href='{e(x)}'>{e(Path(x).name)}</a>" for x in links) + "</p>"
                    )
            for label in info.get("missing", []):
                parts.append(f"<p class='flag'>{e(label)} {e(info.get('missing_note', MISSING_NOTE))}.</p>")
    return parts


def html(results: dict[str, Any], rows: list[Row], runs: list[Run]) -> str:
    """One self-contained page: inline CSS and SVG, no scripts or fonts from anywhere."""
    e = _html.escape
    environment = results["env"]
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>poolx profile {e(results['scenario']['name'])}</title><style>{CSS}</style></head><body>",
        f"<h1>poolx profile <code>{e(results['scenario']['name'])}</code></h1>",
        f"<p>{e(results['scenario']['doc'])}</p>",
        f"<p class='muted'>{e(_env.header(environment))}<br>size {results['scenario']['size']:,}; "
        f"backend {e(results['config']['backend'])}"
        f"{e(' at ' + results['config']['address']) if results['config'].get('address') else ''}; "
        f"{results['config']['repeat']} timed runs per row "
        f"after a warm-up; created {e(results['created'])}; command <code>{e(results['command'])}</code><br>"
        "Timings come from unprofiled runs. Each task or actor run starts a fresh Executor: its wall "
        "time includes starting the processes.</p>",
        "<h2 id='verdicts'>Verdicts</h2><ul class='verdicts'>",
        *(f"<li>{e(v)}</li>" for v in results["verdicts"]),
        "</ul><h2 id='results'>Results</h2>",
        table_html(RESULT_HEADERS, [result_cells(r) for r in rows], "results"),
        "<p class='muted'>speedup: serial median / this median; efficiency: speedup / workers; task p50/p95: "
        "duration of a task or actor call in its process; dispatch p50: from the moment a task could have "
        "started (submitted, its process free) to its start; CPU util: CPU time of the processes / (wall x "
        "processes); peak mem: the largest process's peak resident memory; pickled: bytes sent to / received "
        "from the processes.</p>",
    ]
    if not have_matplotlib():
        parts.append("<p class='flag'>The charts need matplotlib: pip install matplotlib (poolx's "
                     "'profile' extra).</p>")
    scaling = chart_scaling(rows)
    if scaling:
        parts += [
            "<h2 id='scaling'>Speedup and efficiency</h2>",
            f"<div class='chart' id='chart-scaling'>{scaling}</div>",
        ]
    parts += [
        "<h2 id='accounting'>Where the worker time went</h2>",
        table_html(ACCOUNT_HEADERS, [account_cells(r) for r in rows if r.mode != "serial"], "accounting"),
        "<p class='muted'>"
        + "; ".join(
            f"<span class='swatch' style='background:{PALETTE[b]}'></span><b>{b}</b>: {e(BUCKET_HELP[b])}"
            for b in BUCKETS
        )
        + ". Per process, the six add up to the wall time.</p>",
    ]
    acc = chart_accounting(rows)
    if acc:
        parts.append(f"<div class='chart' id='chart-accounting'>{acc}</div>")
    medians = []
    for row in rows:
        group = [
            r
            for r in runs
            if (r.mode, r.workers) == (row.mode, row.workers) and r.repeat >= 0 and r.profile == "none"
        ]
        if group:
            medians.append(analyze.median_run(group))
    top = max((r.workers for r in rows), default=1)
    shown = [r for r in medians if r.mode == "serial" or r.workers == top]
    timeline = chart_timelines(shown)
    if timeline:
        parts += [
            f"<h2 id='timelines'>Timelines (median runs, {top} workers, shared time axis)</h2>",
            f"<div class='chart' id='chart-timelines'>{timeline}</div>",
            "<p class='muted'>Every run of the table is in <a href='trace.json'>trace.json</a> "
            "(open it in ui.perfetto.dev or chrome://tracing).</p>",
        ]
    parts.append("<h2 id='processes'>Per process (median runs)</h2>")
    for row in rows:
        if row.mode == "serial":
            continue
        flag = f" <span class='flag'>imbalance: {e(row.imbalance)}</span>" if row.imbalance else ""
        parts.append(f"<h3>{e(row.key)}{flag}</h3>")
        parts.append(table_html(LANE_HEADERS, lane_cells(row, row.wall), "lanes"))
    parts += profiles_html(results)
    parts += [
        "<h2 id='files'>Files</h2><ul>",
        "<li><a href='results.json'>results.json</a>: every run's raw data "
        "(compare two with <code>poolx profile compare A B</code>)</li>",
        "<li><a href='trace.json'>trace.json</a>: Chrome/Perfetto trace, one lane per process</li>",
        "</ul>",
        "<h2 id='environment'>Environment</h2>",
        table_html(["", ""], [[k, env_value(v)] for k, v in environment.items()], "environment"),
        "</body></html>",
    ]
    return "\n".join(parts)
