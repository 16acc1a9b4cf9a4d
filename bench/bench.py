"""Benchmark the program under mocks: resources, import and registration time, memory, graph depth.

Each cluster shape runs in a fresh interpreter, so imports are cold and peak memory is its own:

    venv/bin/python bench/bench.py            # docs/performance.md's table: 1+1, 3+3, 3+25, 3+100
    venv/bin/python bench/bench.py 3 50       # one shape, as JSON

Registration time is the whole evaluation under the SDK's mock monitor, with real key generation
in the tls mocks (tests/fake_tls.py); it is not a `pulumi up`, which the cloud dominates.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHAPES = [(1, 1), (3, 3), (3, 25), (3, 100)]


def measure(controllers: int, workers: int) -> dict[str, float]:
    sys.path.insert(0, str(ROOT))
    start = time.perf_counter()
    import pulumi  # noqa: F401
    import pulumi_command  # noqa: F401
    import pulumi_gcp
    import pulumi_random  # noqa: F401
    import pulumi_tls  # noqa: F401

    import components.cluster  # noqa: F401

    # pulumi_gcp loads `compute` (thousands of classes) lazily, on first use: count it as import.
    _ = pulumi_gcp.compute.Instance
    imported = time.perf_counter()
    from tests.harness import longest_chain, run_program

    begin = time.perf_counter()
    recording = run_program({"controllerCount": str(controllers), "workerCount": str(workers)})
    registered = time.perf_counter()
    return {
        "controllers": controllers,
        "workers": workers,
        "resources": len(recording.resources),
        "import_s": round(imported - start, 3),
        "register_s": round(registered - begin, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "longest_chain": longest_chain(recording),
    }


def main() -> None:
    if len(sys.argv) == 3:
        print(json.dumps(measure(int(sys.argv[1]), int(sys.argv[2]))))
        return
    rows = []
    for controllers, workers in SHAPES:
        out = subprocess.run(
            [sys.executable, __file__, str(controllers), str(workers)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    print("| cluster | resources | import (s) | registration (s) | peak RSS (MB) | longest chain |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['controllers']}+{r['workers']} | {r['resources']} | {r['import_s']} | {r['register_s']} "
            f"| {r['peak_rss_mb']} | {r['longest_chain']} |"
        )
    base = next(r for r in rows if (r["controllers"], r["workers"]) == (3, 3))
    big = next(r for r in rows if (r["controllers"], r["workers"]) == (3, 100))
    per_worker_ms = (big["register_s"] - base["register_s"]) / (big["workers"] - base["workers"]) * 1000
    print(f"\nper extra worker: {per_worker_ms:.1f} ms of registration")


if __name__ == "__main__":
    main()
