"""Run the fuzz harnesses for a time budget each.

    .venv/bin/python -m fuzz.run                   # 60 s each
    .venv/bin/python -m fuzz.run --seconds 3600    # as long as you like
    .venv/bin/python -m fuzz.run --seconds 15 frames

Each harness starts from its seed corpus in fuzz/corpus/<name>/ (read only);
new interesting inputs go to fuzz/corpus-new/<name>/ (git-ignored), so
promising ones can be copied into the seeds by hand. A crash leaves a
``crash-*`` file in the current directory and fails the run.
"""

from __future__ import annotations

import argparse
import pathlib
import re
import subprocess
import sys

HARNESSES = {"handshake": "fuzz.handshake_fuzz", "frames": "fuzz.frames_fuzz"}
ROOT = pathlib.Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=60, help="budget per harness")
    parser.add_argument("names", nargs="*", help=f"harnesses (default: {', '.join(HARNESSES)})")
    args = parser.parse_args()
    unknown = set(args.names) - set(HARNESSES)
    if unknown:
        parser.error(f"unknown harness {', '.join(sorted(unknown))}")
    failed = False
    for name in args.names or list(HARNESSES):
        out = ROOT / "corpus-new" / name
        out.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable, "-m", HARNESSES[name], str(out), str(ROOT / "corpus" / name),
            f"-max_total_time={args.seconds}", "-print_final_stats=1",
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        runs = re.findall(r"Done (\d+) runs in (\d+) second", result.stderr)
        summary = f"{runs[-1][0]} executions in {runs[-1][1]} s" if runs else "no summary"
        status = "ok" if result.returncode == 0 else f"FAILED (exit {result.returncode})"
        print(f"fuzz {name}: {status}, {summary}", flush=True)
        if result.returncode != 0:
            failed = True
            print(result.stderr[-4000:], file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
