"""``poolx profile compare A B``: two runs' rows side by side, each difference judged against noise.

Every row of either run is shown (a row one run does not have says so), and a
row is called "faster" or "slower" only when the difference is larger than
the runs' own noise: ``RULE`` says how, and is printed by ``--help``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .profile import SCHEMA
from .report import ratio, seconds, table

#: With a single timed run there is no spread to judge a difference by, and a
#: whole program run twice on a shared machine often differs by several
#: percent.  Lower: more "faster"/"slower" calls that do not repeat; higher:
#: real changes under the threshold are only seen with --repeat.
SINGLE_RUN_NOISE = 0.10

RULE = f"""\
How each row is judged:
  both runs timed it 2 or more times: "faster" or "slower" only when the two
    ranges (fastest run..slowest run) do not overlap, else "within noise";
  either run timed it once (--repeat 1): there is no spread to judge by, so
    "faster" or "slower" only when the medians are more than {SINGLE_RUN_NOISE:.0%} apart,
    else "within noise";
  a row only one run has is shown as "only in A" or "only in B", and a row
  that failed in either run as "failed in A" or "failed in B".
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("before", help="results.json of the first run (or its folder)")
    p.add_argument("after", help="results.json of the second run (or its folder)")


def run(args: argparse.Namespace) -> int:
    try:
        a, b = load(args.before), load(args.after)
    except (OSError, ValueError) as exc:
        print(f"poolx profile compare: error: {exc}", file=sys.stderr)
        return 2
    print(render(a, b, args.before, args.after))
    return 0


def load(spec: str) -> dict[str, Any]:
    """The results.json at ``spec`` (a file, or the folder holding it)."""
    path = Path(spec)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise ValueError(f"{path} does not exist: give a results.json that poolx profile wrote, or the "
                         "folder holding it (that run's --out)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not JSON ({exc}): give a results.json poolx profile wrote") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ValueError(f"{path} is not a poolx profile results.json (schema {SCHEMA})")
    if data.get("kind") == "whatif":
        raise ValueError(f"{path} is a what-if run (poolx profile run --backends/--workers): its settings "
                         "are side by side in its report.html; compare takes two scenario or program runs "
                         "(one setting's folder inside it will do)")
    return data


def judge(ra: dict[str, Any] | None, rb: dict[str, Any] | None) -> tuple[float | None, str]:
    """(B / A of the medians, the verdict) for one row of each run (None: the run has no such row)."""
    if ra is None or rb is None:
        return None, "only in B" if ra is None else "only in A"
    failed = [side for side, r in (("A", ra), ("B", rb)) if r.get("errors")]
    change = rb["wall"] / ra["wall"] if ra["wall"] > 0 else None
    if failed:
        return change, f"failed in {' and '.join(failed)}"
    if change is None:
        return None, "no timing in A"
    direction = "faster" if change < 1 else "slower"
    if min(ra.get("repeats", 1), rb.get("repeats", 1)) < 2:
        if abs(change - 1) <= SINGLE_RUN_NOISE:
            return change, f"within noise (single run: under {SINGLE_RUN_NOISE:.0%} apart)"
        return change, f"{direction} (single run: over {SINGLE_RUN_NOISE:.0%} apart)"
    if rb["wall_min"] <= ra["wall_max"] and ra["wall_min"] <= rb["wall_max"]:
        return change, "within noise (ranges overlap)"
    return change, f"{direction} (ranges apart)"


def _cells(r: dict[str, Any] | None) -> list[str]:
    if r is None:
        return ["-", "-"]
    runs = r.get("repeats", 1)
    if runs < 2:
        return [seconds(r["wall"]), "1 run"]
    return [seconds(r["wall"]), f"{seconds(r['wall_min'])}..{seconds(r['wall_max'])} ({runs} runs)"]


def render(a: dict[str, Any], b: dict[str, Any], name_a: str, name_b: str) -> str:
    rows_a = {r["key"]: r for r in a["rows"]}
    rows_b = {r["key"]: r for r in b["rows"]}
    keys = list(rows_a) + [k for k in rows_b if k not in rows_a]
    cells = []
    for key in keys:
        ra, rb = rows_a.get(key), rows_b.get(key)
        change, verdict = judge(ra, rb)
        cells.append([key, *_cells(ra), *_cells(rb), ratio(change), verdict])
    head = (
        f"A: {name_a} ({a['scenario']['name']}, {a['created']})\n"
        f"B: {name_b} ({b['scenario']['name']}, {b['created']})\n"
    )
    if a["scenario"]["name"] != b["scenario"]["name"] or a["scenario"]["size"] != b["scenario"]["size"]:
        head += "note: the two runs are of different scenarios or sizes\n"
    headers = ["mode", "A wall", "A range", "B wall", "B range", "B / A"]
    lines = table(headers, [c[:-1] for c in cells]).splitlines()
    # (the verdicts are sentences: left-aligned after the figures)
    verdicts = ["verdict"] + [c[-1] for c in cells]
    body = "\n".join(f"{line}  {verdict}" for line, verdict in zip(lines, verdicts))
    return head + "\n" + body + "\n\nverdict: see 'poolx profile compare --help' for the rule"

