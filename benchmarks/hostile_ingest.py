"""Hostile sources against ingest: wall time and peak memory of each, in its own process.

    python -m benchmarks.hostile_ingest [--deadline 5] [--cap-mb 64]

A loopback `benchmarks.hostile_server` serves a drip (1 byte / 0.5 s), a 1.5 GB body
(announced, and not announced), a truncated body, a redirect to ``file:///etc/passwd``
and a JSON nested 100,000 deep; a 30,000 x 30,000 PNG bomb is ingested from disk and
thumbnailed. Each case runs in a fresh Python process (``--case``) so its peak RSS
(``ru_maxrss``) is its own; printed per case with the note ingest wrote.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.hostile_server import hostile_server, png_bomb

CASES = ("baseline", "drip", "huge", "stream", "truncated", "redirect", "deep", "bomb-ingest",
         "bomb-thumbnail")


def _run_case(case: str, base: str, workdir: Path, deadline: float, cap_mb: float) -> dict:
    """One case in this process; returns its figures."""
    from db import Store
    from hitl.formats.fetch import FetchLimits
    from hitl.ingest import ingest_paths

    limits = FetchLimits(deadline_s=deadline, max_bytes=int(cap_mb * 2**20),
                         max_json_bytes=int(cap_mb * 2**20))
    bomb = workdir / "bomb.png"
    start = time.monotonic()
    if case == "bomb-thumbnail":
        from engine.images import ImageReadError
        from hitl.views.thumbnails import thumbnail

        try:
            thumbnail(bomb, side=256)
            note = "thumbnail made"
        except ImageReadError as err:
            note = err.reason
    else:
        source = {"baseline": None, "drip": f"{base}/drip/m.json", "huge": f"{base}/huge/m.json",
                  "stream": f"{base}/stream/m.json", "truncated": f"{base}/truncated/m.json",
                  "redirect": f"{base}/redirect-file/m.json", "deep": f"{base}/deep.json",
                  "bomb-ingest": str(bomb)}[case]
        with Store(":memory:") as store:
            report = ingest_paths(store, [source] if source else [], cache_dir=workdir / "cache",
                                  progress=False, limits=limits)
        note = report.skipped[0].reason if report.skipped else "nothing to report"
    seconds = time.monotonic() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"case": case, "seconds": round(seconds, 2), "peak_rss_mib": round(peak_mib),
            "note": note[:110]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--deadline", type=float, default=5.0, help="download deadline, s")
    parser.add_argument("--cap-mb", type=float, default=64.0, help="download size cap, MiB")
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)
    parser.add_argument("--base", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(_run_case(args.case, args.base, Path(args.workdir), args.deadline,
                                   args.cap_mb)))
        return
    with tempfile.TemporaryDirectory() as tmp, hostile_server(drip_s=0.5) as server:
        png_bomb(Path(tmp) / "bomb.png")
        print(f"deadline {args.deadline:g} s, cap {args.cap_mb:g} MiB, bomb "
              f"{(Path(tmp) / 'bomb.png').stat().st_size} bytes (30000x30000)")
        print(f"{'case':<15} {'seconds':>8} {'peak RSS MiB':>13}  note")
        for case in CASES:
            out = subprocess.run([sys.executable, "-m", "benchmarks.hostile_ingest", "--case", case,
                                  "--base", server.base, "--workdir", tmp, "--deadline",
                                  str(args.deadline), "--cap-mb", str(args.cap_mb)],
                                 capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{row['case']:<15} {row['seconds']:>8.2f} {row['peak_rss_mib']:>13}  {row['note']}")


if __name__ == "__main__":
    main()
