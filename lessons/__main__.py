"""Run the lesson examples: ``python -m lessons [N ...] [--quick]``."""

import argparse
import importlib
import os
import sys
import time
import traceback

# Numba's OpenMP layer spin-waits between parallel regions.  On a machine with more busy
# threads than cores (several jobs on 2 cores) that turns a 0.5 ms decode step of a tiny
# model into hundreds of ms; lesson 07 measures it.  Must be set before OpenMP starts.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

from . import LESSONS  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lessons", description=__doc__)
    parser.add_argument("lessons", nargs="*", type=int, metavar="N",
                        help=f"lesson numbers to run (default: all of {sorted(LESSONS)})")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes and few tokens: seconds per lesson (used by the tests)")
    args = parser.parse_args(argv)
    chosen = args.lessons or sorted(LESSONS)
    unknown = [n for n in chosen if n not in LESSONS]
    if unknown:
        parser.error(f"no such lesson: {unknown} (choose from {sorted(LESSONS)})")

    failed = []
    for n in chosen:
        name = LESSONS[n]
        print(f"\n{'#' * 78}\n# lesson {n:02d}: lessons/{name}.py{'  (quick)' if args.quick else ''}\n{'#' * 78}")
        t0 = time.perf_counter()
        try:
            importlib.import_module(f"lessons.{name}").main(quick=args.quick)
        except Exception:  # report, then keep going so one failure does not hide the rest
            traceback.print_exc()
            failed.append(n)
        print(f"\n[lesson {n:02d} finished in {time.perf_counter() - t0:.1f} s]", flush=True)
    if failed:
        print(f"\nFAILED lessons: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
