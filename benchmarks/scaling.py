"""How poolx's costs grow: workers, pending tasks, argument size (issue 23, item 6).

    python benchmarks/scaling.py [--quick] [--sweeps workers,pending,args]
                                 [--impls poolx,multiprocessing.Pool,loky] [--out-dir benchmarks]

Three sweeps, poolx beside multiprocessing.Pool and loky, every point in a
fresh ``python scaling.py --one SWEEP IMPL VALUE`` subprocess (its own session,
a time limit, killed with everything it started if it overruns):

- workers (1, 2, 4, 8; beyond this machine's cores the pool is oversubscribed):
  a batch of CPU-bound tasks (wall time, beside the ideal: the same tasks timed
  in the caller, divided among min(workers, cores)) and tiny tasks submitted
  one by one then gathered (tasks/s);
- pending tasks (10k to 1M): every worker blocked on a task that waits for a
  file, then N no-op tasks submitted, so all N wait in the caller: the caller's
  resident memory per pending task (RSS before and after, garbage collected),
  the submit rate, then the file made and every result gathered (drain rate);
- argument size (1 KB to 1 GB): a uint8 array passed to a task that returns its
  length, one untimed call then the median of a few, each awaited: seconds a
  call and GB/s.  1 GB only where the machine has the memory for it.

Writes RESULTS-scaling.md, results-scaling.json and scaling-workers.png,
scaling-pending.png, scaling-args.png (matplotlib, optional: without it the
charts are skipped and said to be) in --out-dir.  ``--quick`` (smaller
sweeps) takes under a minute.
"""

import argparse
import datetime
import gc
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

if __name__ in ("__main__", "__mp_main__"):  # the workers unpickle these by reference (see _case.py)
    import _workloads as w

IMPLS = ["poolx", "multiprocessing.Pool", "loky"]
SWEEPS = ["workers", "pending", "args"]
KB, MB, GB = 10**3, 10**6, 10**9
# The sweeps' points and sizes.  Full: about 8.5 minutes on the 2-core machine this
# was written on (pending's 1M is most of it: 1M tasks submitted and drained by
# each library, loky's alone about 4 minutes); quick: about 30 s.
FULL = {"workers": [1, 2, 4, 8], "pending": [10_000, 100_000, 1_000_000],
        "args": [1 * KB, 1 * MB, 10 * MB, 100 * MB, 1 * GB],
        "cpu_tasks": 64, "cpu_loops": 600_000, "tiny_tasks": 10_000, "arg_calls": 5}
QUICK = {"workers": [1, 2, 4, 8], "pending": [10_000, 50_000], "args": [1 * KB, 1 * MB, 32 * MB],
         "cpu_tasks": 16, "cpu_loops": 150_000, "tiny_tasks": 1_000, "arg_calls": 3}
# Workers of the pending and args sweeps (the machine's 2 cores).
WORKERS = 2
# Timed calls of the 1 GB point: each moves 1 GB, through a pipe at about 0.3 GB/s for
# multiprocessing.Pool and loky; 3 keep the point under a minute.
BIG_ARG_CALLS = 3
# The largest argument is sent only with this much memory available: the caller's
# array, a pickled copy and the worker's copy at once, with room to spare.
BIG_ARG_MEMORY = 6
# Seconds one point may take before its process tree is killed and it is recorded as a timeout.
# loky's 1M pending tasks took 259 s on an idle 2-core machine (it drains about 5,000/s).
POINT_TIMEOUT_S = {"workers": 120, "pending": 600, "args": 180}
# How long a blocker task waits for its file at most: past the longest point's limit.
BLOCK_LIMIT_S = 400


# -- one point, in its own process ------------------------------------------------------


def open_pool(impl, workers):
    """(submit(fn, *args) -> an object with .result(), close()) for ``impl``, default settings."""
    if impl == "poolx":
        import poolx

        ex = poolx.Executor(max_workers=workers)
        return ex.submit, lambda: ex.shutdown(wait=True)
    if impl == "loky":
        import loky

        ex = loky.get_reusable_executor(max_workers=workers)
        return ex.submit, lambda: ex.shutdown(wait=True)
    if impl == "multiprocessing.Pool":
        import multiprocessing

        pool = multiprocessing.Pool(workers)

        class Result:  # AsyncResult.get under concurrent.futures' name
            __slots__ = ("get",)

            def __init__(self, r):
                self.get = r.get

            def result(self):
                return self.get()

        def close():
            pool.close()
            pool.join()

        return (lambda fn, *args: Result(pool.apply_async(fn, args))), close
    raise SystemExit(f"unknown implementation {impl!r}; known: {', '.join(IMPLS)}")


def warm(submit, workers):
    """Every worker started: 2 x workers tasks that sleep 50 ms each."""
    for f in [submit(time.sleep, 0.05) for _ in range(2 * workers)]:
        f.result()


def rss_bytes():
    """This process's resident memory (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def usable_cpus():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def point_workers(submit, workers, sizes):
    """A CPU-bound batch (s, and its ideal) and tiny tasks one by one (tasks/s) on ``workers`` workers."""
    n, loops = sizes["cpu_tasks"], sizes["cpu_loops"]
    t0 = time.perf_counter()
    for _ in range(3):
        w.spin(loops)
    one = (time.perf_counter() - t0) / 3
    t0 = time.perf_counter()
    results = [f.result() for f in [submit(w.spin, loops) for _ in range(n)]]
    batch_s = time.perf_counter() - t0
    assert results == [w.spin(loops)] * n, "wrong spin results"
    tiny = sizes["tiny_tasks"]
    t0 = time.perf_counter()
    results = [f.result() for f in [submit(w.inc, i) for i in range(tiny)]]
    tiny_s = time.perf_counter() - t0
    assert results == list(range(1, tiny + 1)), "wrong inc results"
    return {"workers": workers, "cpu_batch_s": batch_s, "cpu_ideal_s": n * one / min(workers, usable_cpus()),
            "cpu_task_s": one, "cpu_tasks": n, "tiny_per_s": tiny / tiny_s, "tiny_tasks": tiny}


def point_pending(submit, n):
    """N no-op tasks pending behind blocked workers: the caller's bytes per task, submit and drain rates."""
    folder = tempfile.mkdtemp(prefix="scaling-")
    flag = os.path.join(folder, "go")
    try:
        blockers = [submit(w.wait_for_file, flag, BLOCK_LIMIT_S) for _ in range(WORKERS)]
        time.sleep(0.2)  # the blockers reach the workers
        gc.collect()
        before = rss_bytes()
        t0 = time.perf_counter()
        futures = [submit(w.noop) for _ in range(n)]
        submit_s = time.perf_counter() - t0
        gc.collect()
        after = rss_bytes()
        open(flag, "w").close()
        t0 = time.perf_counter()
        assert all(b.result() for b in blockers), "a blocker gave up waiting"
        assert [f.result() for f in futures] == [None] * n, "wrong noop results"
        drain_s = time.perf_counter() - t0
    finally:
        if os.path.exists(flag):
            os.unlink(flag)
        os.rmdir(folder)
    return {"pending": n, "bytes_per_task": (after - before) / n, "rss_before": before, "rss_after": after,
            "submit_per_s": n / submit_s, "drain_per_s": n / drain_s}


def point_args(submit, size, sizes):
    """A ``size``-byte uint8 array to a task returning its length: seconds a call (median), GB/s."""
    import numpy as np

    a = np.full(size, 7, dtype=np.uint8)  # every page written before any timer
    expected = (size, 7)
    assert tuple(submit(w.size_of, a).result()) == expected, "wrong size_of result"  # untimed
    calls = BIG_ARG_CALLS if size >= GB else sizes["arg_calls"]
    runs = []
    for _ in range(calls):
        t0 = time.perf_counter()
        got = submit(w.size_of, a).result()
        runs.append(time.perf_counter() - t0)
        assert tuple(got) == expected, "wrong size_of result"
    call_s = statistics.median(runs)
    # The same array, one byte changed before each call: poolx's kept copy cannot be
    # reused (its kernel watch sees the write), so every call moves the whole array.
    edited = []
    for k in range(calls):
        a[0] = k % 200
        t0 = time.perf_counter()
        got = submit(w.size_of, a).result()
        edited.append(time.perf_counter() - t0)
        assert tuple(got) == expected, "wrong size_of result"
    edited_s = statistics.median(edited)
    return {"bytes": size, "call_s": call_s, "gb_per_s": size / call_s / GB, "calls": calls, "runs_s": runs,
            "edited_call_s": edited_s, "edited_gb_per_s": size / edited_s / GB, "edited_runs_s": edited}


def run_point(sweep, impl, value, quick):
    sizes = QUICK if quick else FULL
    if sweep == "args":
        import numpy  # noqa: F401  (before any timer)
    workers = value if sweep == "workers" else WORKERS
    submit, close = open_pool(impl, workers)
    try:
        warm(submit, workers)
        if sweep == "workers":
            result = point_workers(submit, workers, sizes)
        elif sweep == "pending":
            result = point_pending(submit, value)
        else:
            result = point_args(submit, value, sizes)
    finally:
        close()
    return result


# -- the sweep: one subprocess a point ------------------------------------------------------


def available_memory():
    """MemAvailable in bytes (Linux), or None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def measure(sweep, impl, value, quick):
    """One point in a fresh subprocess of its own session; the record of what happened."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", sweep, impl, str(value)]
    cmd += ["--quick"] if quick else []
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(HERE), env.get("PYTHONPATH", "")] if p)
    record = {"sweep": sweep, "impl": impl, "value": value}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=POINT_TIMEOUT_S[sweep])
        status = "ok" if proc.returncode == 0 else "error"
    except subprocess.TimeoutExpired:
        kill_session(proc.pid)
        out, err = proc.communicate()
        status = "timeout"
    except BaseException:  # Ctrl-C or SIGTERM: the point's processes die with the sweep
        kill_session(proc.pid)
        proc.wait()
        raise
    kill_session(proc.pid)  # anything the point left behind (a forkserver, loky's workers)
    record["wall_s"] = round(time.perf_counter() - t0, 2)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if status == "ok" and lines:
        record.update(json.loads(lines[-1]), status="ok")
    else:
        record.update(status=status if status != "ok" else "error", stderr_tail=err[-1500:])
    return record


def kill_session(sid):
    """SIGKILL every process of session ``sid`` (Linux /proc)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) == sid and fields[0] not in ("Z", "X"):
            try:
                os.kill(int(entry), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def sweep_points(sweeps, impls, quick):
    """(sweep, impl, value, skip reason or None) of every point, in the order they run."""
    sizes = QUICK if quick else FULL
    memory = available_memory()
    for sweep in sweeps:
        for value in sizes[sweep]:
            for impl in impls:
                skip = None
                if sweep == "args" and value >= GB and memory is not None and memory < BIG_ARG_MEMORY * value:
                    skip = f"{memory / GB:.1f} GB available, {BIG_ARG_MEMORY * value / GB:.0f} GB needed"
                yield sweep, impl, value, skip


def run_sweeps(sweeps, impls, quick):
    records = []
    for sweep, impl, value, skip in sweep_points(sweeps, impls, quick):
        if skip:
            record = {"sweep": sweep, "impl": impl, "value": value, "status": "skipped", "skip_reason": skip}
        else:
            record = measure(sweep, impl, value, quick)
        records.append(record)
        print(progress(record), flush=True)
    return records


def progress(r):
    if r["status"] != "ok":
        return f"  {r['sweep']:<8} {r['impl']:<22} {r['value']:>12,}  {r['status'].upper()}"
    figure = {"workers": lambda: f"batch {r['cpu_batch_s']:.3f} s (ideal {r['cpu_ideal_s']:.3f}), "
                                 f"tiny {r['tiny_per_s']:,.0f}/s",
              "pending": lambda: f"{r['bytes_per_task']:,.0f} B/task, submit {r['submit_per_s']:,.0f}/s, "
                                 f"drain {r['drain_per_s']:,.0f}/s",
              "args": lambda: f"{r['call_s'] * 1e3:,.2f} ms/call, {r['gb_per_s']:.3f} GB/s; edited "
                              f"{r['edited_gb_per_s']:.3f} GB/s"}[r["sweep"]]()
    return f"  {r['sweep']:<8} {r['impl']:<22} {r['value']:>12,}  {figure}  ({r['wall_s']:.1f} s)"


# -- outputs ------------------------------------------------------------------------------------


def series(records, sweep, key):
    """{impl: [(value, figure)]} of the points of ``sweep`` that succeeded."""
    out = {}
    for r in records:
        if r["sweep"] == sweep and r["status"] == "ok":
            out.setdefault(r["impl"], []).append((r["value"], r[key]))
    return out


# What each chart shows: (file, [(sweep, key, y label, log x, log y)]).
CHARTS = {
    "workers": ("scaling-workers.png", [("workers", "cpu_batch_s", "CPU-bound batch, s (lower is better)",
                                         False, False),
                                        ("workers", "tiny_per_s", "tiny tasks/s (higher is better)",
                                         False, False)]),
    "pending": ("scaling-pending.png", [("pending", "bytes_per_task", "caller's bytes per pending task",
                                         True, False),
                                        ("pending", "drain_per_s", "drain, tasks/s (higher is better)",
                                         True, False)]),
    "args": ("scaling-args.png", [("args", "call_s", "seconds a call (lower is better)", True, True),
                                  ("args", "gb_per_s", "GB/s, the same array (higher is better)", True, True),
                                  ("args", "edited_gb_per_s", "GB/s, one byte changed before each call",
                                   True, True)]),
}
X_LABELS = {"workers": "workers (2 cores: oversubscribed beyond 2)", "pending": "pending tasks",
            "args": "argument size, bytes"}


def ideal_line(records):
    """[(workers, s)]: the batch at the median task time of every point, divided among the cores."""
    points = [r for r in records if r["sweep"] == "workers" and r["status"] == "ok"]
    if not points:
        return []
    one = statistics.median(r["cpu_task_s"] for r in points)
    cpus = usable_cpus()
    return [(n, points[0]["cpu_tasks"] * one / min(n, cpus)) for n in sorted({r["workers"] for r in points})]


def plot(records, sweeps, out_dir):
    """The charts of the sweeps that ran; the files written, or the reason there are none."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        return [], f"matplotlib cannot be imported ({exc}): no charts"
    written = []
    for sweep in sweeps:
        name, panels = CHARTS[sweep]
        fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4))
        for ax, (_sweep, key, label, logx, logy) in zip(axes, panels):
            for impl, points in series(records, sweep, key).items():
                ax.plot(*zip(*points), marker="o", label=impl)
            if sweep == "workers" and key == "cpu_batch_s":
                ideal = ideal_line(records)
                if ideal:
                    ax.plot(*zip(*ideal), linestyle="--", color="grey", label="ideal (caller's time / cores)")
            if not logy:
                ax.set_ylim(bottom=0)  # differences read at their true size
            ax.set_xscale("log" if logx else "linear")
            ax.set_yscale("log" if logy else "linear")
            ax.set_xlabel(X_LABELS[sweep])
            ax.set_ylabel(label)
            ax.grid(True, alpha=0.3)
            ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=90)
        plt.close(fig)
        written.append(name)
    return written, None


def table(records, sweep, columns):
    """Markdown rows of one sweep: one line per (value, impl)."""
    head = ["implementation", X_LABELS[sweep].split(" (")[0], *(c[0] for c in columns)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in [r for r in records if r["sweep"] == sweep]:
        if r["status"] == "ok":
            cells = [fmt(r[key]) for _title, key, fmt in columns]
        else:
            reason = r.get("skip_reason") or (r.get("stderr_tail") or "").strip().splitlines()[-1:]
            cells = [f"{r['status']}: {reason}" if reason else r["status"]] + ["-"] * (len(columns) - 1)
        bold = f"**{r['impl']}**" if r["impl"] == "poolx" else r["impl"]
        lines.append("| " + " | ".join([bold, f"{r['value']:,}", *cells]) + " |")
    return lines


SECTIONS = {
    "workers": ("Workers", "A batch of CPU-bound tasks ({cpu_tasks} tasks of `spin({cpu_loops:,})`, pure "
                "Python) submitted at once and gathered, beside the ideal (the same task timed 3 times in "
                "the caller: tasks x its time / min(workers, cores)); then {tiny_tasks:,} tiny tasks "
                "(`inc(i)`) submitted one by one and gathered.  Pools warmed first.  The machine has "
                "{cpus} cores: beyond them the workers share the cores.",
                [("batch s", "cpu_batch_s", lambda v: f"{v:.3f}"),
                 ("ideal s", "cpu_ideal_s", lambda v: f"{v:.3f}"),
                 ("tiny tasks/s", "tiny_per_s", lambda v: f"{v:,.0f}")]),
    "pending": ("Pending tasks", "Both workers blocked on a task waiting for a file; then N no-op tasks "
                "submitted, all of which wait in the caller: the caller's resident memory (RSS, after "
                "`gc.collect()`) after the submits less before, per task; the submit rate; then the file "
                "made and every result gathered (drain rate).  RSS moves in pages and the allocator keeps "
                "freed memory, so small N read coarse.",
                [("bytes / pending task", "bytes_per_task", lambda v: f"{v:,.0f}"),
                 ("submit tasks/s", "submit_per_s", lambda v: f"{v:,.0f}"),
                 ("drain tasks/s", "drain_per_s", lambda v: f"{v:,.0f}")]),
    "args": ("Argument size", "A uint8 numpy array (every page written) passed to `size_of(a)`, which "
             "returns its length and last byte; one untimed call, then the median of {arg_calls} calls "
             "(1 GB: {big} calls), each awaited; then as many calls with one byte of the array changed "
             "before each (\"edited\").  poolx sends a large argument through shared memory "
             "(arriving as a copy-on-write mapping) and reuses its copy while the kernel sees no write "
             "to the array, so the same array costs about nothing after the first call and an edited "
             "one a whole copy; multiprocessing.Pool and loky pickle it through a pipe every time.",
             [("ms a call", "call_s", lambda v: f"{v * 1e3:,.2f}"),
              ("GB/s", "gb_per_s", lambda v: f"{v:.3f}"),
              ("edited: ms a call", "edited_call_s", lambda v: f"{v * 1e3:,.2f}"),
              ("edited: GB/s", "edited_gb_per_s", lambda v: f"{v:.3f}")]),
}


def markdown(data, charts, chart_note):
    config, sizes, env = data["config"], data["sizes"], data["environment"]
    lines = ["# poolx scaling: workers, pending tasks, argument size", "",
             f"Generated by `{config['command']}` in {config['total_s']:.0f} s on {env['date']}"
             f" (poolx {env['poolx_git']}, {env['usable_cpus']} usable CPU cores, Python {env['python']}; "
             f"load average at the start {env['load_average_at_start']}).  Every point ran once, in a fresh "
             "process; the figures are in `results-scaling.json` beside this file.  The machine may be "
             "shared: read the libraries against each other, point by point, not the absolute figures.", ""]
    if chart_note:
        lines += [chart_note, ""]
    for sweep in config["sweeps"]:
        title, text, columns = SECTIONS[sweep]
        lines += [f"## {title}", "", text.format(cpus=env["usable_cpus"], big=BIG_ARG_CALLS, **sizes), ""]
        if CHARTS[sweep][0] in charts:
            lines += [f"![{title}]({CHARTS[sweep][0]})", ""]
        lines += [*table(data["records"], sweep, columns), ""]
    return "\n".join(lines) + "\n"


def git_revision():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment():
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "python": platform.python_version(), "platform": platform.platform(),
            "usable_cpus": usable_cpus(), "poolx_git": git_revision(),
            "load_average_at_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
            "memory_available_gb": round((available_memory() or 0) / GB, 1)}


def parse_args(argv):
    p = argparse.ArgumentParser(description="How poolx's costs grow with workers, pending tasks and "
                                            "argument size, beside multiprocessing.Pool and loky.")
    p.add_argument("--quick", action="store_true", help="smaller sweeps: under a minute")
    p.add_argument("--sweeps", default=",".join(SWEEPS), help="subset of: " + ",".join(SWEEPS))
    p.add_argument("--impls", default=",".join(IMPLS), help="subset of: " + ",".join(IMPLS))
    p.add_argument("--out-dir", default=str(HERE), help="where RESULTS-scaling.md, results-scaling.json "
                                                         "and the charts go (default: this folder)")
    p.add_argument("--one", nargs=3, metavar=("SWEEP", "IMPL", "VALUE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for name, known in (("sweeps", SWEEPS), ("impls", IMPLS)):
        chosen = [x.strip() for x in getattr(args, name).split(",") if x.strip()]
        unknown = [x for x in chosen if x not in known]
        if unknown or not chosen:
            p.error(f"unknown --{name}: {', '.join(unknown) or '(none given)'}; known: {', '.join(known)}")
        setattr(args, name, [k for k in known if k in chosen])
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.one:
        sweep, impl, value = args.one
        print(json.dumps(run_point(sweep, impl, int(value), args.quick)), flush=True)
        return 0
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # unwinds: the point dies too
    env = environment()
    print(f"poolx scaling: {', '.join(args.sweeps)} on {', '.join(args.impls)}"
          f"{' (quick)' if args.quick else ''}; {env['usable_cpus']} usable CPUs", flush=True)
    t0 = time.perf_counter()
    records = run_sweeps(args.sweeps, args.impls, args.quick)
    config = {"command": "python benchmarks/scaling.py " + " ".join(argv), "quick": args.quick,
              "sweeps": args.sweeps, "impls": args.impls, "total_s": time.perf_counter() - t0}
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = {"environment": env, "config": config, "sizes": QUICK if args.quick else FULL, "records": records}
    (out_dir / "results-scaling.json").write_text(json.dumps(data, indent=2) + "\n")
    charts, note = plot(records, args.sweeps, out_dir)
    (out_dir / "RESULTS-scaling.md").write_text(markdown(data, charts, note))
    print(f"wrote {out_dir}/RESULTS-scaling.md, results-scaling.json and {', '.join(charts) or 'no charts'} "
          f"({config['total_s']:.0f} s)")
    # A peer's timeout is a finding (recorded in the table); poolx's is a failure.
    return 1 if any(r["status"] not in ("ok", "skipped") for r in records if r["impl"] == "poolx") else 0


if __name__ == "__main__":
    sys.exit(main())
