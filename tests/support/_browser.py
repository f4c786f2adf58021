"""A real browser for the tests: load a self-contained HTML file and report what went wrong.

    from _browser import load_page, require_browser, screenshot

    require_browser()                      # skip here without a browser; fail under CI=true
    page = load_page(path, selectors=["table", "svg"])
    assert page.console_errors == []
    assert page.count("svg") == 2

Each call starts its own headless Chromium (through Playwright's sync API), and
stops it again before returning, whatever happened: no browser process outlives
the call.  The whole call is bounded by ``timeout_s``; past it the browser and
the Playwright driver are killed and ``TimeoutError`` is raised.

The page must be offline: every request for anything other than ``file:`` (and
the inline ``data:``/``blob:``/``about:`` URLs, which never leave the page) is
blocked and reported as an error, alongside console errors, uncaught exceptions
and failed requests.

Chromium is found as ``$POOLX_CHROMIUM``, else ``chromium``, ``chromium-browser``
or ``google-chrome`` on the PATH.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pathlib
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psutil

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")

# What works as root, in a sandbox, with no network and no display.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]

# URL schemes that never leave the machine or the page.
_OFFLINE_SCHEMES = ("file:", "data:", "blob:", "about:")

# Settle the page after ``load``: a timer turn and two animation frames, so
# scripts run from load handlers, setTimeout(0) and the first frames are done.
_SETTLE_JS = """() => new Promise(resolve => setTimeout(
    () => requestAnimationFrame(() => requestAnimationFrame(() => resolve(true))), 0))"""

_COUNT_JS = """selectors => selectors.map(s => {
    try { return document.querySelectorAll(s).length; } catch (e) { return -1; }
})"""


@dataclass
class PageResult:
    """What a page did while it loaded, and what it looked like after."""

    console_errors: list[str]
    dom: str
    counts: dict[str, int] = field(default_factory=dict)
    title: str = ""
    requests: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, selector: str) -> int:
        """How many elements matched ``selector`` in the browser (pass it in load_page's selectors)."""
        try:
            n = self.counts[selector]
        except KeyError:
            raise KeyError(
                f"{selector!r} was not counted; pass selectors=[{selector!r}, ...] to load_page"
            ) from None
        if n < 0:
            raise ValueError(f"{selector!r} is not a valid CSS selector")
        return n


def find_chromium() -> str | None:
    """The browser executable: $POOLX_CHROMIUM, else the first of CHROMIUM_NAMES on the PATH."""
    env = os.environ.get("POOLX_CHROMIUM")
    if env:
        return env
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def browser_available() -> str | None:
    """None when a page can be loaded here; otherwise the reason it cannot."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as e:
        return f"playwright is not installed ({e}); pip install -e '.[test]'"
    exe = find_chromium()
    if exe is None:
        return f"no browser: set POOLX_CHROMIUM or install one of {', '.join(CHROMIUM_NAMES)}"
    if not (os.path.isfile(exe) and os.access(exe, os.X_OK)):
        return f"browser {exe!r} is not an executable file"
    return None


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_browser() -> None:
    """Skip the calling test when no browser is here; under CI (CI=true) fail instead."""
    import pytest

    reason = browser_available()
    if reason is None:
        return
    if in_ci():
        pytest.fail(f"CI needs a real browser for this test: {reason}", pytrace=False)
    pytest.skip(reason)


def load_page(
    path: pathlib.Path | str, timeout_s: float = 30, selectors: Iterable[str] = (), width: int = 1200
) -> PageResult:
    """Open ``path`` in headless Chromium, let its scripts run, and report errors, DOM and counts."""
    return _run(pathlib.Path(path), timeout_s, list(selectors), width, None)


def screenshot(
    path: pathlib.Path | str,
    out_png: pathlib.Path | str,
    full_page: bool = True,
    width: int = 1200,
    timeout_s: float = 30,
    selectors: Iterable[str] = (),
) -> PageResult:
    """Like load_page, and also write a PNG of the page (``width`` CSS pixels wide) to ``out_png``."""
    out = pathlib.Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)

    def shoot(page: Any, ms: float) -> None:
        page.screenshot(path=str(out), full_page=full_page, timeout=ms)

    return _run(pathlib.Path(path), timeout_s, list(selectors), width, shoot)


# -- the one place a browser is started and stopped ---------------------------------------------


def _descendants() -> dict[int, psutil.Process]:
    out = {}
    for p in psutil.Process().children(recursive=True):
        out[p.pid] = p
    return out


def _kill_all(procs: Iterable[psutil.Process]) -> None:
    procs = list(procs)
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(procs, timeout=5)


def _strays(marker: str) -> list[psutil.Process]:
    """Live processes whose command line names ``marker`` (this launch's private config dir)."""
    out = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(marker in arg for arg in p.info["cmdline"] or ()) and _alive(p):
                out.append(p)
        except psutil.Error:
            continue
    return out


_PR_SET_CHILD_SUBREAPER = 36
_PR_GET_CHILD_SUBREAPER = 37


def _subreaper(on: bool | None) -> bool | None:
    """Linux: make this process the subreaper of its descendants (on), or not; return the old setting.

    Chromium leaves orphans: its zygotes when the browser exits, and its crash
    handler, which double-forks on purpose.  Orphans normally go to PID 1 (as
    zombies until it reaps them, forever in a container without an init); as a
    subreaper, this process gets them back and reaps them itself.
    Returns None, doing nothing, where prctl is not available.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        old = ctypes.c_int(0)
        if libc.prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(old), 0, 0, 0) != 0:
            return None
        if on is not None and libc.prctl(_PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) != 0:
            return None
        return bool(old.value)
    except (OSError, AttributeError):
        return None


def _reap_zombies() -> None:
    """Reap this process's zombie children that are browser processes (never anything else's)."""
    for p in psutil.Process().children():
        try:
            if p.status() == psutil.STATUS_ZOMBIE and "chrom" in p.name():
                os.waitpid(p.pid, os.WNOHANG)
        except (psutil.Error, ChildProcessError):
            continue


@contextlib.contextmanager
def _reaper(timeout_s: float) -> Iterator[tuple[str, Callable[[], bool]]]:
    """Kill whatever this block starts, on the deadline or, if still alive, at its end.

    Playwright's driver (node) and the browser it starts are our descendants; the
    browser runs in its own process group, so if the driver died first it would be
    orphaned: the tree is recorded as it grows, so it is still known at the end.
    While the block runs this process is a subreaper (see _subreaper), so the
    browser's orphans stay in the tree.  Where that is not possible, Chromium's
    crash handler is still found by the private config dir (XDG_CONFIG_HOME) it is
    given, which this yields along with a function that tells whether the deadline fired.
    """
    before = set(_descendants())
    fired = threading.Event()
    seen: dict[int, psutil.Process] = {}
    confdir = tempfile.mkdtemp(prefix="poolx-browser-")
    was_subreaper = _subreaper(True)

    def ours() -> list[psutil.Process]:
        for pid, p in _descendants().items():
            if pid not in before:
                seen[pid] = p
        return [p for p in seen.values() if _alive(p)]

    def everything() -> list[psutil.Process]:
        procs = {p.pid: p for p in ours()}
        procs.update((p.pid, p) for p in _strays(confdir))
        return list(procs.values())

    def on_deadline() -> None:
        fired.set()
        _kill_all(everything())

    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.2):
            ours()

    watcher = threading.Thread(target=watch, name="browser-reaper-watch", daemon=True)
    timer = threading.Timer(timeout_s, on_deadline)
    timer.name = "browser-reaper-deadline"
    timer.daemon = True
    watcher.start()
    timer.start()
    try:
        yield confdir, fired.is_set
    finally:
        timer.cancel()
        timer.join()
        stop.set()
        watcher.join()
        left = everything()
        if left:
            # The browser is closed by now; its helpers exit on their own, shortly.
            _, alive = psutil.wait_procs(left, timeout=5)
            _kill_all(alive)
        _reap_zombies()
        if was_subreaper is not None:
            _subreaper(was_subreaper)
        _reap_zombies()
        shutil.rmtree(confdir, ignore_errors=True)


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _run(
    path: pathlib.Path,
    timeout_s: float,
    selectors: list[str],
    width: int,
    extra: Callable[[Any, float], None] | None,
) -> PageResult:
    reason = browser_available()
    if reason is not None:
        raise RuntimeError(reason)
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    path = path.resolve()
    if not path.is_file():
        raise FileNotFoundError(path)
    url = path.as_uri()
    exe = find_chromium()
    start = time.monotonic()
    deadline = start + timeout_s

    def left_ms() -> float:
        return max(1.0, (deadline - time.monotonic()) * 1000)

    errors: list[str] = []
    requests: list[str] = []

    def on_console(msg: Any) -> None:
        if msg.type == "error":
            loc = msg.location or {}
            where = f" ({loc.get('url', '')}:{loc.get('lineNumber', '')})" if loc.get("url") else ""
            errors.append(f"console.error: {msg.text}{where}")

    def on_request(req: Any) -> None:
        requests.append(req.url)
        if not req.url.startswith(_OFFLINE_SCHEMES):
            errors.append(f"network request (the page must be offline): {req.url}")

    def on_route(route: Any) -> None:
        if route.request.url.startswith(_OFFLINE_SCHEMES):
            route.continue_()
        else:
            route.abort("blockedbyclient")

    with _reaper(timeout_s) as (confdir, timed_out):
        try:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(
                    executable_path=exe,
                    args=CHROMIUM_ARGS,
                    headless=True,
                    timeout=left_ms(),
                    # Chromium's own files (crash reports) go to a private dir, not ~/.config.
                    env={**os.environ, "XDG_CONFIG_HOME": confdir},
                )
                try:
                    context = browser.new_context(
                        viewport={"width": width, "height": 800}, service_workers="block"
                    )
                    context.set_default_timeout(left_ms())
                    context.route("**/*", on_route)
                    page = context.new_page()
                    page.on("console", on_console)
                    page.on("pageerror", lambda exc: errors.append(f"uncaught exception: {exc}"))
                    page.on("request", on_request)
                    page.on(
                        "requestfailed",
                        lambda req: errors.append(f"request failed: {req.url} ({req.failure})"),
                    )
                    page.goto(url, wait_until="load", timeout=left_ms())
                    page.evaluate(_SETTLE_JS)
                    counts = dict(zip(selectors, page.evaluate(_COUNT_JS, selectors)))
                    dom = page.evaluate("() => document.documentElement.outerHTML")
                    title = page.title()
                    if extra is not None:
                        extra(page, left_ms())
                finally:
                    with contextlib.suppress(PlaywrightError):
                        browser.close()
        except PlaywrightError as e:
            if timed_out() or isinstance(e, PlaywrightTimeout):
                raise TimeoutError(f"{path}: the browser did not finish within {timeout_s}s") from e
            raise
        if timed_out():
            raise TimeoutError(f"{path}: the browser did not finish within {timeout_s}s")
    return PageResult(
        console_errors=errors,
        dom=dom,
        counts=counts,
        title=title,
        requests=requests,
        seconds=time.monotonic() - start,
    )
