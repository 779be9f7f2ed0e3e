"""What the idle app costs the machine: context switches and CPU of every process, while the
benchmark's app (full-size BLIP, as ``bench_blip_caption.py`` serves it) answers nothing.

    python bench/idle_wakeups.py                 # Ray's and Serve's defaults
    RAY_raylet_report_resources_period_milliseconds=1000 \\
      RAY_SERVE_CONTROL_LOOP_INTERVAL_S=1 RAY_task_events_report_interval_ms=5000 \\
      RAY_SERVE_REPLICA_AUTOSCALING_METRIC_RECORD_INTERVAL_S=5 \\
      RAY_SERVE_HANDLE_AUTOSCALING_METRIC_RECORD_INTERVAL_S=5 \\
      RAY_metrics_report_interval_ms=30000 \\
      python bench/idle_wakeups.py              # slower timers

Counts come from ``/proc``: every thread's voluntary and involuntary context switches, and
user plus system time, over ``--seconds`` (Linux only).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from bench_blip_caption import bench_config, make_images, serve_app

from vlgraph.tiny import ensure_checkpoint


def snapshot() -> dict[str, tuple[int, int, str]]:
    """Per process: context switches of all its threads, CPU ticks, command line."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")[:70]
            ticks = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            switches = 0
            for thread in os.listdir(f"/proc/{pid}/task"):
                for line in Path(f"/proc/{pid}/task/{thread}/status").read_text().splitlines():
                    if "ctxt_switches" in line:
                        switches += int(line.split()[1])
        except OSError:
            continue
        found[pid] = (switches, int(ticks[11]) + int(ticks[12]), command)
    return found


def main() -> None:
    """Start the app, let it settle, and print the busiest processes and the totals."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--settle", type=float, default=10.0)
    parser.add_argument("--cache-dir", default=".cache/vlgraph/checkpoints")
    args = parser.parse_args()
    checkpoint = ensure_checkpoint("blip-caption", args.cache_dir, "full")
    with tempfile.TemporaryDirectory() as folder:
        make_images(Path(folder), 8)
        serve_app(bench_config(checkpoint, Path(folder), 8, 20, 2, True, 64, 1))
        time.sleep(args.settle)
        before, started = snapshot(), time.monotonic()
        time.sleep(args.seconds)
        after, elapsed = snapshot(), time.monotonic() - started
    tick = os.sysconf("SC_CLK_TCK")
    rows = []
    for pid, (switches, ticks, command) in after.items():
        old_switches, old_ticks, _ = before.get(pid, (0, 0, ""))
        rows.append(
            ((switches - old_switches) / elapsed, (ticks - old_ticks) / tick / elapsed, command)
        )
    rows.sort(reverse=True)
    for wakeups, cpu, command in rows[:12]:
        print(f"{wakeups:7.0f} switches/s  {100 * cpu:5.1f}% of a core  {command}")
    print(
        f"total: {sum(row[0] for row in rows):.0f} switches/s, "
        f"{100 * sum(row[1] for row in rows):.1f}% of a core"
    )
    print("command: python bench/idle_wakeups.py")


if __name__ == "__main__":
    main()
