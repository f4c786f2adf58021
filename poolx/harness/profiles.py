"""Turning the per-process profiler outputs of a profiled run into reports.

A process leaves one file per capture (``_hook.ProfilerHook``):
``<label>-p<pid>.<ext>``, then ``<label>-p<pid>-1.<ext>``, ``-2``, ...  On the
processes backend that is one file per process; on a cluster backend (dask,
ray) one per task or actor call, labelled ``task`` or with the actor's label.
The files of one label and pid are one process's profile: ``task`` files are
attributed to the worker lane of the run with that pid (``pids``), or shown as
"cluster worker" when the run does not know the pid.

CPU (pyinstrument): each process's sessions (``.pyisession``) are combined
(``Session.combine``), their stacks relabelled so that each starts with its
process ("worker 0 (pid 4711)"), and combined into one call tree per mode
(HTML); each process becomes one profile of a speedscope file.  Combined
sessions add durations up: the tree shows where worker time went, not a
timeline (the timeline is trace.json).

Memory (memray): each capture (``.bin``) is read; a process's row gives the
largest peak of its captures (on a cluster: of one call, counting only what
that call allocated), the allocations of all of them, and a flamegraph
(``memray flamegraph --no-web``: opens offline) of the capture with that peak.
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._hook import slug

_FILE = re.compile(r"^(?P<label>.+)-p(?P<pid>\d+)(?:-(?P<seq>\d+))?\.(pyisession|bin)$")

#: The label a cluster backend starts the profiler with around a task.
TASK_LABEL = "task"
#: The label of a cluster worker's task captures whose pid the run does not know.
UNATTRIBUTED = "cluster worker"


@dataclass
class ProcessProfile:
    label: str
    pid: int
    paths: list[Path]  # its captures, in the order they were taken

    @property
    def path(self) -> Path:
        return self.paths[0]


def _found(directory: Path, ext: str, labels: Iterable[str] = (),
           pids: Mapping[int, str] | None = None) -> list[ProcessProfile]:
    """The captures in ``directory``, grouped by process.  ``labels`` (the run's
    process labels, plus "driver") turn file names back into labels
    ("actor-Tracker-3" -> "actor Tracker#3"); ``pids`` (pid -> worker label)
    attributes a cluster worker's ``task`` captures."""
    known = {}
    for label in ("driver", *labels):
        known[slug(label)] = label
        if label.startswith("actor "):  # (a backend may give an actor's label without "actor ")
            known.setdefault(slug(label[len("actor "):]), label)
    groups: dict[tuple[str, int], list[tuple[int, Path]]] = {}
    for path in directory.glob(f"*.{ext}"):
        m = _FILE.match(path.name)
        if not m:
            continue
        pid = int(m["pid"])
        if m["label"] == TASK_LABEL:
            label = (pids or {}).get(pid, UNATTRIBUTED)
        else:
            label = known.get(m["label"], m["label"].replace("-", " ", 1))
        groups.setdefault((label, pid), []).append((int(m["seq"] or 0), path))
    return [
        ProcessProfile(label, pid, [path for _seq, path in sorted(items)])
        for (label, pid), items in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1]))
    ]


# -- CPU -------------------------------------------------------------------------------


def relabel(session: Any, label: str, pid: int) -> Any:
    """Give every stack of ``session`` the process's label as its root frame.

    pyinstrument 5 starts each recorded stack with a thread frame
    ("MainThread\\x00<thread>\\x00<ident>"); forked workers share idents, so
    without this their trees would merge into one.
    """
    root = f"{label}\x00<thread>\x00{pid}"
    records = []
    for stack, time_ in session.frame_records:
        if stack and "\x00<thread>\x00" in stack[0]:
            stack = [root, *stack[1:]]
        else:
            stack = [root, *stack]
        records.append((stack, time_))
    session.frame_records = records
    return session


def cpu_reports(directory: Path, title: str, labels: Iterable[str] = (),
                pids: Mapping[int, str] | None = None) -> dict[str, Any]:
    """Merge the sessions in ``directory``: writes ``<directory>.html`` and
    ``<directory>.speedscope.json``; returns what the report shows."""
    from pyinstrument.renderers import HTMLRenderer, SpeedscopeRenderer
    from pyinstrument.session import Session

    found = _found(directory, "pyisession", labels, pids)
    sessions = []
    captures = {}
    for prof in found:
        label = f"{prof.label} (pid {prof.pid})"
        loaded = []
        for path in prof.paths:
            try:
                loaded.append(Session.load(str(path)))
            except Exception:  # cut short as the process died: the others still count
                continue
        if not loaded:
            continue
        combined = functools.reduce(Session.combine, loaded)
        sessions.append((label, relabel(combined, label, prof.pid)))
        captures[label] = len(loaded)
    if not sessions:
        return {"processes": [], "html": None, "speedscope": None, "hot": []}
    merged = functools.reduce(Session.combine, [s for _, s in sessions])
    workers = [s for label, s in sessions if not label.startswith("driver")]
    merged.target_description = title
    html_path = directory.with_suffix(".html")
    html_path.write_text(_offline(HTMLRenderer().render(merged)), encoding="utf-8")
    speedscope_path = directory.with_suffix(".speedscope.json")
    speedscope_path.write_text(
        json.dumps(
            _merge_speedscope(
                [(label, json.loads(SpeedscopeRenderer().render(s))) for label, s in sessions], title
            )
        ),
        encoding="utf-8",
    )
    return {
        "processes": [
            {"label": label, "samples": s.sample_count, "duration": s.duration, "cpu_time": s.cpu_time,
             "captures": captures[label]}
            for label, s in sessions
        ],
        "html": html_path.name,
        "speedscope": speedscope_path.name,
        # Where the workers' time went: in a parallel mode the driver mostly waits.
        "hot": hot_functions(functools.reduce(Session.combine, workers) if workers else merged),
    }


def _offline(html: str) -> str:
    """pyinstrument's page loads Google Fonts (its script adds the stylesheet):
    point that at an empty stylesheet, so the page fetches nothing."""
    html = re.sub(r"<link[^>]+fonts\.googleapis\.com[^>]*>", "", html)
    return re.sub(r"https://fonts\.googleapis\.com/css[^\"'\s]*", "data:text/css,", html)


def _merge_speedscope(files: list[tuple[str, dict[str, Any]]], title: str) -> dict[str, Any]:
    """One speedscope file, one profile per process (frame indices re-based)."""
    frames: list[Any] = []
    profiles = []
    for label, data in files:
        base = len(frames)
        frames.extend(data["shared"]["frames"])
        for profile in data["profiles"]:
            profile = dict(profile, name=label)
            if profile.get("type") == "evented":
                profile["events"] = [dict(e, frame=e["frame"] + base) for e in profile["events"]]
            else:
                profile["samples"] = [[i + base for i in s] for s in profile["samples"]]
            profiles.append(profile)
    return {
        "$schema": "https://www.speedscope.app/file-format-schema.json",
        "name": title,
        "activeProfileIndex": 0,
        "exporter": "poolx profile",
        "shared": {"frames": frames},
        "profiles": profiles,
    }


#: Where a poolx worker or actor waits for its next message: time under these
#: frames is idle, not work, and is reported apart from the hot functions.
_WAITING = (str(Path("poolx", "backends", "processes", "_channel.py")),)
WAITING_LABEL = "(waiting for the next task: poolx's channel)"


def hot_functions(session: Any, limit: int = 8) -> list[dict[str, Any]]:
    """The functions with the most self time in ``session`` (summed over
    processes); time a worker spent waiting for work comes first, as one line."""
    totals: dict[tuple[str, str], float] = {}
    root = session.root_frame(trim_stem=False)
    if root is None:
        return []
    total = root.time or 1.0
    waiting = 0.0
    stack = [root]
    while stack:
        frame = stack.pop()
        if (frame.file_path or "").endswith(_WAITING):
            waiting += frame.time  # the whole subtree: recv, poll, ...
            continue
        stack.extend(frame.children)
        if frame.is_synthetic or frame.file_path == "<thread>" or frame.total_self_time <= 0:
            continue
        key = (
            frame.function or "?",
            f"{frame.file_path_short or frame.file_path or '?'}:{frame.line_no or 0}",
        )
        totals[key] = totals.get(key, 0.0) + frame.total_self_time
    top = sorted(totals.items(), key=lambda kv: kv[1], reverse=True)[:limit]
    out = [{"function": f, "where": w, "seconds": t, "share": t / total} for (f, w), t in top]
    if waiting > 0:
        out.insert(0, {"function": WAITING_LABEL, "where": "", "seconds": waiting, "share": waiting / total})
    return out


def functions_in(path: Path) -> set[str]:
    """Every function name in a saved session (used by the tests)."""
    from pyinstrument.session import Session

    session = Session.load(str(path))
    names = set()
    for stack, _ in session.frame_records:
        for frame in stack:
            names.add(frame.split("\x00", 1)[0])
    return names


# -- memory ----------------------------------------------------------------------------


def mem_reports(directory: Path, labels: Iterable[str] = (), timeout: float = 300.0,
                pids: Mapping[int, str] | None = None) -> list[dict[str, Any]]:
    """A peak-memory row per process in ``directory``, with a flamegraph of its
    capture with the largest peak."""
    import memray

    rows = []
    for prof in _found(directory, "bin", labels, pids):
        row: dict[str, Any] = {"label": prof.label, "pid": prof.pid, "capture": prof.path.name,
                               "captures": len(prof.paths)}
        best: tuple[int, Path] | None = None
        allocations = 0
        errors = []
        for path in prof.paths:
            try:
                with memray.FileReader(str(path)) as reader:
                    meta = reader.metadata
                    peak = int(meta.peak_memory)
                    allocations += int(meta.total_allocations)
                    if best is None or peak > best[0]:
                        best = (peak, path)
                        top = max(
                            reader.get_high_watermark_allocation_records(merge_threads=True),
                            key=lambda r: r.size,
                            default=None,
                        )
                        row.pop("top_site", None)
                        row.pop("top_bytes", None)
                        if top is not None:
                            trace = top.stack_trace(1)
                            where = f"{trace[0][0]} ({trace[0][1]}:{trace[0][2]})" if trace else "?"
                            row["top_site"] = where
                            row["top_bytes"] = int(top.size)
            except Exception as exc:  # a capture cut short
                errors.append(f"{path.name}: {type(exc).__name__}: {exc}")
        if errors:
            row["unreadable"] = len(errors)
        if best is None:
            row["error"] = errors[0] if errors else "no capture"
            rows.append(row)
            continue
        row["peak"], row["capture"] = best[0], best[1].name
        row["allocations"] = allocations
        html = best[1].with_suffix(".html")
        proc = subprocess.run(
            [sys.executable, "-m", "memray", "flamegraph", "--no-web", "-f", "-o", str(html), str(best[1])],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if proc.returncode == 0:
            row["flamegraph"] = str(html.relative_to(directory.parent.parent))
        else:
            row["error"] = f"memray flamegraph failed: {proc.stderr.strip()[-300:]}"
        rows.append(row)
    return rows
