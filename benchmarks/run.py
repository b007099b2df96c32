"""Run every benchmark in this folder and write the combined report to ``benchmarks/latest.md``.

Usage: ``python benchmarks/run.py [NAME ...] [--quick]`` (``make bench`` runs all of them).
Each ``bench_*.py`` module exposes ``main(argv) -> str`` and measures our code and its peers in
the same run. Curated numbers, with the command that made them, live in ``RESULTS.md``.
"""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

BENCHES = sorted(f[:-3] for f in os.listdir(HERE) if f.startswith("bench_") and f.endswith(".py"))


def main() -> int:
    names = [a for a in sys.argv[1:] if not a.startswith("-")] or BENCHES
    passthrough = [a for a in sys.argv[1:] if a.startswith("-")]
    unknown = sorted(set(names) - set(BENCHES))
    if unknown:
        print(f"unknown benchmark(s) {unknown}; choose from {BENCHES}", file=sys.stderr)
        return 2
    os.chdir(HERE)  # memory probes import bench modules from here
    parts = [f"# Benchmark run {time.strftime('%Y-%m-%d %H:%M')}\n"]
    for name in names:
        print(f"== {name}", file=sys.stderr)
        report = importlib.import_module(name).main(passthrough)
        parts.append(
            f"## {name}\n\nCommand: `python benchmarks/{name}.py {' '.join(passthrough)}`\n\n{report}"
        )
    fd, tmp = tempfile.mkstemp(dir=HERE, suffix=".md.tmp")
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(parts))
    os.replace(tmp, os.path.join(HERE, "latest.md"))
    print(f"wrote {os.path.join(HERE, 'latest.md')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
