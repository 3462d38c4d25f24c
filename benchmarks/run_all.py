#!/usr/bin/env python
"""Run every benchmark (``benchmarks/bench_*.py``); each writes its JSON to benchmarks/results/.

python benchmarks/run_all.py [--quick] [--only augment pseudo_store]
"""

import argparse
import glob
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--only", nargs="*", help="benchmark names (bench_<name>.py) to run")
    args = parser.parse_args()
    scripts = sorted(glob.glob(os.path.join(HERE, "bench_*.py")))
    if args.only:
        scripts = [s for s in scripts if os.path.basename(s)[6:-3] in args.only]
    failed = []
    for script in scripts:
        name = os.path.basename(script)[6:-3]
        print(f"=== {name}", flush=True)
        started = time.time()
        cmd = [sys.executable, script] + (["--quick"] if args.quick else [])
        if subprocess.call(cmd) != 0:
            failed.append(name)
        print(f"=== {name}: {time.time() - started:.0f} s", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
