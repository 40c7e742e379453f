"""Issue 13 memory benchmark: the data layer's peak memory on a generated text file of >= 100 MB.

Generates the file (tinyshakespeare's lines in seeded random order, repeated to the size asked, plus a few
non-ASCII characters so the character path is the general one), then in a fresh process: RSS before, the
data layer (read, vocabulary, tokens, 90/10 split, the TextLoader and one batch), and the process's peak
RSS (ru_maxrss). Reported: (peak - before) / file bytes.

    PYTHONPATH=src python scripts/lm_memory.py --mb 100 [--file /tmp/big.txt] [--out FILE.json]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
import torch
from deba.data.text import TextLoader, load_text
def rss():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * 4096
before = rss()
t0 = time.perf_counter()
data = load_text(sys.argv[1], 64)
loader = TextLoader(data.train, 64, 12)
loader.set_epoch(1)
x, y = next(loader.batches())
secs = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"before": before, "peak": peak, "after": rss(), "tokens": data.train.numel() + data.val.numel(),
                  "vocab": data.vocab.size, "dtype": str(data.train.dtype), "seconds": secs}))
"""


def generate(path: str, mb: int, source: str) -> None:
    lines = open(source, encoding="utf-8").read().splitlines(keepends=True)
    rng = random.Random(0)
    target = mb * 1_000_000
    written = 0
    with open(path, "w", encoding="utf-8") as f:
        while written < target:
            rng.shuffle(lines)
            block = "".join(lines) + "café naïve — ✓\n"
            f.write(block)
            written += len(block.encode("utf-8"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=int, default=100)
    p.add_argument("--file", default="/tmp/deba-lm-memory.txt")
    p.add_argument("--source", default="/work/shared/data/tinyshakespeare.txt")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if not os.path.exists(args.file) or os.path.getsize(args.file) < args.mb * 1_000_000:
        generate(args.file, args.mb, args.source)
    size = os.path.getsize(args.file)
    res = json.loads(subprocess.run([sys.executable, "-c", CHILD, args.file], check=True, capture_output=True,
                                    text=True).stdout)
    res.update(file_bytes=size, ratio=(res["peak"] - res["before"]) / size)
    print(f"file {size / 1e6:.1f} MB, {res['tokens']} tokens ({res['dtype']}, vocab {res['vocab']}): data layer "
          f"peak {(res['peak'] - res['before']) / 1e6:.1f} MB = {res['ratio']:.2f}x the file, {res['seconds']:.1f}s")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
