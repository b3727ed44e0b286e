"""Requests/s of the data builder against a teacher that answers after a fixed delay, vs the ideal.

With `c` requests in flight and every answer taking `d` seconds, no client can do better than c/d
requests/s. The fake OpenAI-compatible server (tests/fake_openai.py) runs in its own process so it does
not share the builder's interpreter. Usage:
    python benchmarks/teacher_throughput.py --runs 8:0.1 32:0.1 64:0.1 64:0.25 256:1.0 --requests 1600
Each run is concurrency:delay; the server restarts for each delay.
Writes a Markdown table to stdout (and --out, if given).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from cotdistill.entrypoints import run_or_exit
from cotdistill.outputs import check_output_file
from cotdistill.report import markdown_table

REPO = Path(__file__).resolve().parents[1]


def start_server(delay: float) -> tuple[subprocess.Popen, str]:
    server = subprocess.Popen([sys.executable, str(REPO / "tests" / "fake_openai.py"), "--port", "0",
                               "--delay", str(delay)], stdout=subprocess.PIPE, text=True)
    base_url = server.stdout.readline().strip()
    if not base_url.startswith("http"):
        server.kill()
        raise RuntimeError(f"the fake server did not start (printed {base_url!r})")
    return server, base_url


def measure(base_url: str, concurrency: int, requests: int, out: Path) -> dict:
    """One build of `requests` single-sample requests; returns this run's counters from the manifest."""
    from cotdistill.config import load_build_config
    from cotdistill.teacher.builder import build_dataset

    config = load_build_config(None, [
        f"output_dir={out}", "problems.dataset=synthetic", f"problems.synthetic.train_size={requests // 4}",
        "teacher.backend=openai", "teacher.model=fake-teacher", f"teacher.base_url={base_url}",
        f"teacher.concurrency={concurrency}", "teacher.samples_per_request=1", "cot.samples=4"])
    manifest = json.loads(build_dataset(config).read_text())
    return manifest["this_run"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", nargs="+", default=["8:0.1", "32:0.1", "64:0.1", "64:0.25", "256:1.0"],
                        help="concurrency:delay pairs (delay: seconds the server waits before each answer)")
    parser.add_argument("--requests", type=int, default=1600)
    parser.add_argument("--out", help="also write the table to this file")
    args = parser.parse_args()
    if args.out:  # checked now: a missing folder must not cost the whole run
        run_or_exit(lambda: check_output_file(args.out))
    os.environ.setdefault("OPENAI_API_KEY", "EMPTY")
    rows = []
    for run_spec in args.runs:
        concurrency, delay = int(run_spec.split(":")[0]), float(run_spec.split(":")[1])
        server, base_url = start_server(delay)
        try:
            with tempfile.TemporaryDirectory() as tmp:
                run = measure(base_url, concurrency, args.requests, Path(tmp) / "build")
        finally:
            server.kill()
        rate = run["requests_sent"] / run["ask_seconds"]
        ideal = concurrency / delay
        rows.append([concurrency, f"{delay:g}", run["requests_sent"], f"{run['ask_seconds']:.2f}", f"{rate:.1f}",
                     f"{ideal:.0f}", f"{100 * rate / ideal:.0f}%"])
        print(rows[-1], file=sys.stderr, flush=True)
    table = markdown_table(["concurrency", "delay (s)", "requests", "seconds", "requests/s", "ideal", "of ideal"],
                           rows)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
