"""The real-browser check (tests/support/_browser.py) itself: it must be able to fail, and clean up."""

from __future__ import annotations

import pathlib
import time

import psutil
import pytest
from _browser import browser_available, load_page, require_browser, screenshot

pytestmark = pytest.mark.timeout(60)


def _live_chromium() -> set[int]:
    """Running (not zombie) processes with chromium or chrome in their command line."""
    out = set()
    for p in psutil.process_iter(["cmdline", "status"]):
        try:
            if p.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            cmd = " ".join(p.info["cmdline"] or ())
        except psutil.Error:
            continue
        if "chromium" in cmd or "chrome" in cmd:
            out.add(p.pid)
    return out


@pytest.fixture
def browser():
    """Skip without a browser (fail under CI); after the test, no browser process is left."""
    require_browser()
    before = _live_chromium()
    yield
    deadline = time.monotonic() + 5
    while (left := _live_chromium() - before) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"browser processes left behind: {sorted(left)}"


def _page(tmp_path: pathlib.Path, body: str, head: str = "") -> pathlib.Path:
    path = tmp_path / "page.html"
    path.write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>t</title>{head}</head>"
        f"<body>{body}</body></html>",
        encoding="utf-8",
    )
    return path


CLEAN = """
<h1>Report</h1>
<table id="t"><thead><tr><th>a</th><th>b</th></tr></thead>
<tbody><tr><td>1</td><td>2</td></tr><tr><td>3</td><td>4</td></tr></tbody></table>
<svg xmlns="http://www.w3.org/2000/svg" width="40" height="20">
  <rect width="10" height="10"/><circle cx="30" cy="10" r="5"/></svg>
<img alt="inline" src="data:image/gif;base64,R0lGODlhAQABAAAAACw=">
<script>
  // A script that builds part of the page: its result must be in the DOM we get back.
  const row = document.createElement("tr");
  row.innerHTML = "<td>5</td><td>6</td>";
  document.querySelector("#t tbody").appendChild(row);
  setTimeout(() => document.body.setAttribute("data-ready", "yes"), 0);
</script>
"""


def test_clean_page_has_no_errors_and_right_counts(browser, tmp_path):
    result = load_page(
        _page(tmp_path, CLEAN), selectors=["table", "tbody tr", "svg", "svg rect, svg circle", "[data-ready]"]
    )
    assert result.console_errors == []
    assert result.count("table") == 1
    assert result.count("tbody tr") == 3  # two written, one added by the script
    assert result.count("svg") == 1
    assert result.count("svg rect, svg circle") == 2
    assert result.count("[data-ready]") == 1  # ran from a setTimeout(0)
    assert "<td>5</td>" in result.dom
    assert result.dom.startswith("<html")
    assert all(u.startswith(("file:", "data:")) for u in result.requests)
    with pytest.raises(KeyError, match="selectors="):
        result.count("p")


def test_console_error_is_reported(browser, tmp_path):
    result = load_page(_page(tmp_path, "<p>x</p><script>console.error('deliberate ' + 42)</script>"))
    assert any("deliberate 42" in e for e in result.console_errors), result.console_errors


def test_uncaught_exception_is_reported(browser, tmp_path):
    body = "<script>function f() { throw new TypeError('deliberately thrown'); } f();</script><p>after</p>"
    result = load_page(_page(tmp_path, body), selectors=["p"])
    assert any("deliberately thrown" in e for e in result.console_errors), result.console_errors
    assert result.count("p") == 1  # the page still loaded


def test_exception_in_load_handler_is_reported(browser, tmp_path):
    body = "<script>window.addEventListener('load', () => { null.x; });</script>"
    result = load_page(_page(tmp_path, body))
    assert any("uncaught exception" in e for e in result.console_errors), result.console_errors


def test_remote_script_is_reported_and_blocked(browser, tmp_path):
    path = _page(tmp_path, "<p>x</p>", head='<script src="https://cdn.example.com/x.js"></script>')
    result = load_page(path)
    assert any("https://cdn.example.com/x.js" in e for e in result.console_errors), result.console_errors
    assert "https://cdn.example.com/x.js" in result.requests


def test_remote_stylesheet_and_fetch_are_reported(browser, tmp_path):
    head = '<link rel="stylesheet" href="http://fonts.example.org/f.css">'
    body = "<script>fetch('https://api.example.net/data').catch(() => {});</script>"
    result = load_page(_page(tmp_path, body, head=head))
    errors = "\n".join(result.console_errors)
    assert "http://fonts.example.org/f.css" in errors
    assert "https://api.example.net/data" in errors


def test_missing_local_file_is_reported(browser, tmp_path):
    result = load_page(_page(tmp_path, '<img src="missing.png" alt="gone">'))
    assert any("missing.png" in e for e in result.console_errors), result.console_errors


def test_hung_page_times_out_and_is_cleaned_up(browser, tmp_path):
    path = _page(tmp_path, "<script>while (true) {}</script>")
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        load_page(path, timeout_s=5)
    assert time.monotonic() - start < 20


def test_screenshot(browser, tmp_path):
    out = tmp_path / "shots" / "page.png"
    result = screenshot(_page(tmp_path, CLEAN), out, width=800)
    assert result.console_errors == []
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width = int.from_bytes(data[16:20], "big")
    assert width == 800


def test_require_browser_skips_locally_and_fails_under_ci(monkeypatch, tmp_path):
    monkeypatch.setenv("POOLX_CHROMIUM", str(tmp_path / "no-such-browser"))
    assert browser_available() is not None
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        require_browser()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI needs a real browser"):
        require_browser()
