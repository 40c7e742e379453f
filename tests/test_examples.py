"""The scripts in examples/ run as a user would run them (short, on the CPU) and print a consistent trajectory."""
from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
LINE = re.compile(r"^epoch\s+(\d+)\s+batch\s+(\d+) ->\s+(\d+)\s+loss (\S+)\s+samples_seen\s+(\d+)", re.MULTILINE)


def run_example(name: str, tmp_path: Path, epochs: int = 3, samples: int = 512) -> list[tuple]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), "--epochs", str(epochs), "--samples", str(samples)],
                          check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [(int(e), int(b), int(nb), float(loss), int(seen)) for e, b, nb, loss, seen in LINE.findall(proc.stdout)]
    assert [r[0] for r in rows] == list(range(epochs)), proc.stdout
    for (_, _, next_batch, _, _), (_, batch, _, _, _) in itertools.pairwise(rows):
        assert batch == next_batch  # each epoch trains at the size the previous decision chose
    assert [r[4] for r in rows] == [samples * (e + 1) for e in range(epochs)]
    assert all(r[3] > 0 for r in rows)
    return rows


@pytest.mark.slow
def test_custom_loop_example_runs(tmp_path):
    rows = run_example("custom_loop.py", tmp_path)
    assert rows[0][1] == 32  # the loader's own batch size is the start


@pytest.mark.slow
def test_lightning_callback_example_runs(tmp_path):
    pytest.importorskip("lightning")
    rows = run_example("lightning_callback.py", tmp_path)
    assert rows[0][1] == 32
    assert list(tmp_path.iterdir()) == []  # no logs or checkpoints left in the working directory
