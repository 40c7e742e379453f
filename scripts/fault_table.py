"""Regenerate the fault table in docs/reliability.md from the fault-injection suite's results.

    python scripts/fault_table.py                      # runs tests/test_faults.py, then writes the table
    python scripts/fault_table.py --results faults.xml # from an earlier `pytest tests/test_faults.py --junitxml`

The suite tags each test with the fault it checks (the ``fault`` property in the junit XML); a test that
tries many cases at once (the checkpoint bit flips) also reports ``tried`` and ``survived``. Per fault the
table gives the cases tried, those survived (the fault handled as documented) and those lost.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "reliability.md"
START, END = "<!-- fault-table:start -->", "<!-- fault-table:end -->"


def load_faults() -> dict[int, str]:
    spec = importlib.util.spec_from_file_location("test_faults", ROOT / "tests" / "test_faults.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.FAULTS


def run_suite(xml: Path) -> int:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(ROOT / "tests" / "test_faults.py"),
           f"--junitxml={xml}", "-o", "junit_family=xunit1"]
    return subprocess.run(cmd, cwd=ROOT, env=env).returncode


def tally(xml: Path, faults: dict[int, str]) -> dict[int, dict]:
    rows = {n: {"tests": [], "tried": 0, "survived": 0, "skipped": 0} for n in faults}
    for case in ET.parse(xml).getroot().iter("testcase"):
        props: dict[str, list[str]] = {}
        for p in case.iter("property"):
            props.setdefault(p.get("name"), []).append(p.get("value"))
        tagged = sorted({int(v) for v in props.get("fault", [])})
        if not tagged:
            continue
        failed = case.find("failure") is not None or case.find("error") is not None
        skipped = case.find("skipped") is not None
        tried = int(props["tried"][0]) if "tried" in props else 1
        survived = int(props["survived"][0]) if "survived" in props else tried
        if failed:
            survived = min(survived, tried - 1) if "survived" in props else 0
        name = case.get("name", "").split("[")[0]
        for n in tagged:
            row = rows[n]
            if name not in row["tests"]:
                row["tests"].append(name)
            if skipped:
                row["skipped"] += 1
                continue
            row["tried"] += tried
            row["survived"] += survived
    return rows


def render(rows: dict[int, dict], faults: dict[int, str]) -> str:
    lines = ["| # | fault (issue 14) | tests in `tests/test_faults.py` | tried | survived | lost |",
             "| --- | --- | --- | --- | --- | --- |"]
    total = [0, 0]
    for n, text in faults.items():
        r = rows[n]
        lost = r["tried"] - r["survived"]
        total[0] += r["tried"]
        total[1] += r["survived"]
        tests = ", ".join(f"`{t}`" for t in r["tests"]) or "none"
        skipped = f" ({r['skipped']} skipped here)" if r["skipped"] else ""
        lines.append(f"| {n} | {text} | {tests} | {r['tried']}{skipped} | {r['survived']} | {lost} |")
    lines.append(f"| | all | | {total[0]} | {total[1]} | {total[0] - total[1]} |")
    return "\n".join(lines)


def write_doc(table: str, doc: Path = DOC) -> None:
    text = doc.read_text(encoding="utf-8")
    if START not in text or END not in text:
        raise SystemExit(f"{doc}: markers {START} / {END} not found")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    doc.write_text(f"{head}{START}\n{table}\n{END}{tail}", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", help="junit XML of an earlier run of tests/test_faults.py (default: run it now)")
    ap.add_argument("--print", action="store_true", help="print the table instead of writing the doc")
    args = ap.parse_args(argv)
    faults = load_faults()
    code = 0
    if args.results:
        xml = Path(args.results)
    else:
        xml = Path(tempfile.mkdtemp()) / "faults.xml"
        code = run_suite(xml)
    table = render(tally(xml, faults), faults)
    if args.print:
        print(table)
    else:
        write_doc(table)
        print(f"wrote the fault table to {DOC}")
    return code


if __name__ == "__main__":
    sys.exit(main())
