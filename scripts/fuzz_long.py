#!/usr/bin/env python3
"""Long fuzz runs: the properties of ``tests/test_fuzz.py`` with many more examples.

CI runs those properties briefly (a fixed, derandomized set of inputs). This script runs the
same tests through pytest with ``PROXY_FUZZ_EXAMPLES`` examples each and fresh random inputs
(or ``--seed`` to repeat a run), without pytest's per-test timeout::

    python scripts/fuzz_long.py --examples 20000
    python scripts/fuzz_long.py --examples 5000 --seed 1234 -k random_request

Known findings are marked ``xfail`` in the suite; ``--runxfail`` (on by default here) makes
them report as failures, so a long run never hides what it finds. Use ``--keep-xfail`` to let
them stay expected failures. The exit status is pytest's.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FUZZ_TESTS = "tests/test_fuzz.py"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--examples", type=int, default=5000, metavar="N", help="examples per property"
    )
    parser.add_argument("--seed", type=int, default=None, help="repeat a run with this seed")
    parser.add_argument("-k", dest="keyword", default=None, help="only tests matching (pytest -k)")
    parser.add_argument(
        "--keep-xfail", action="store_true", help="leave known findings as expected failures"
    )
    args = parser.parse_args(argv)
    if args.examples < 1:
        parser.error("--examples must be at least 1")

    env = dict(os.environ, PROXY_FUZZ_EXAMPLES=str(args.examples))
    if args.seed is not None:
        env["PROXY_FUZZ_SEED"] = str(args.seed)
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        FUZZ_TESTS,
        "-p",
        "no:cacheprovider",
        "-o",
        "timeout=0",
        "-q",
    ]
    if not args.keep_xfail:
        cmd.append("--runxfail")
    if args.keyword:
        cmd += ["-k", args.keyword]
    print(f"PROXY_FUZZ_EXAMPLES={args.examples}", " ".join(cmd[1:]), flush=True)
    return subprocess.call(cmd, cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main())
