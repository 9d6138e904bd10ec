"""Wall time and peak memory, summed over every process, of a command such as `make demo`.

The README's first command has a budget (8 minutes from a fresh clone on a 2-core AVX2-only
machine, setup included; 4 GB summed over all processes, engine workers included). This runs the
command, samples the resident memory of its whole process tree every 0.2 s (from /proc), and
prints wall time, the peak of the summed RSS and the largest single process. It needs only the
standard library, so it can time `make demo` from a fresh clone (before .venv exists):

    python3 bench/demo_budget.py -- make demo
    uptime; python3 bench/demo_budget.py -- .venv/bin/vmem demo --out /tmp/demo-out
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")


def children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended while we looked
        tree.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    return tree


def rss(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    except OSError:
        return 0


def tree_rss(root: int) -> tuple[int, int]:
    """Summed and largest RSS of `root` and all its descendants."""
    tree, todo, sizes = children(), [root], []
    while todo:
        pid = todo.pop()
        sizes.append(rss(pid))
        todo.extend(tree.get(pid, []))
    return sum(sizes), max(sizes)


def main() -> int:
    argv = sys.argv[1:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        raise SystemExit("usage: demo_budget.py -- COMMAND ...")
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv)
    peak_sum = peak_one = 0
    while proc.poll() is None:
        total, largest = tree_rss(proc.pid)
        peak_sum, peak_one = max(peak_sum, total), max(peak_one, largest)
        time.sleep(0.2)
    wall = time.perf_counter() - t0
    print(f"demo_budget: `{' '.join(argv)}` exit {proc.returncode}, wall {wall // 60:.0f} min "
          f"{wall % 60:.0f} s, peak memory summed over processes {peak_sum / 1e9:.2f} GB, "
          f"largest process {peak_one / 1e9:.2f} GB", file=sys.stderr)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
