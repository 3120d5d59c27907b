"""Time ``perturbcast demo`` end to end (a fresh process: imports, simulation, every model).

The target is under 2 minutes on 2 CPU cores. On a shared machine the wall time depends on
the load, so the process's CPU time (user + system, all threads) and the load average are
printed beside it; the last line holds the key=value figures.

    python benchmarks/bench_demo.py [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2, help="OMP/MKL/torch threads")
    args = ap.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads),
           "MKL_NUM_THREADS": str(args.threads)}
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = subprocess.run([sys.executable, "-m", "perturbcast.cli", "demo", "--out",
                              f"{tmp}/demo"], env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(res.stdout[-3000:])
    if res.returncode:
        print(res.stderr[-3000:])
    cpu = usage.ru_utime + usage.ru_stime
    print(f"rc={res.returncode} demo_wall_s={wall:.1f} demo_cpu_s={cpu:.1f} "
          f"threads={args.threads} load_before={load_before:.1f} "
          f"load_after={os.getloadavg()[0]:.1f} under_2_min={wall < 120}")


if __name__ == "__main__":
    main()
