"""`edgeverify bench`: latency, real-time factor, load time, peak RSS and size of each model."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("bench", help="measure per-clip latency, RTF, load time, peak RSS, model size")
    parser.add_argument("--json", action="store_true", help="print one JSON object with a 'rows' list")
    parser.add_argument("--models", default="int8,fp32", help="comma-separated models to measure (default int8,fp32)")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    parser.add_argument("--clips", default="3,10", help="comma-separated clip lengths in seconds (default 3,10)")
    parser.add_argument("--runs", type=int, default=15, help="timed runs per 3 s cell (longer clips: a third)")
    parser.add_argument("--no-rss", action="store_true", help="skip the peak-RSS measurement of `edgeverify verify`")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..bench import run_bench

    result = run_bench(
        models=[m for m in args.models.split(",") if m],
        clips=[float(c) for c in args.clips.split(",") if c],
        threads=[int(t) for t in args.threads.split(",") if t],
        runs=args.runs,
        measure_rss=not args.no_rss,
    )
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"CPU: {result['cpu']}")
    for name, info in result["models"].items():
        print(f"{name}: {info['file_mb']} MB, load {info['load_ms']} ms, verify peak RSS {info.get('verify_peak_rss_mb')} MB")
    print(f"{'model':6} {'clip_s':>6} {'thr':>3} {'median_ms':>10} {'p90_ms':>8} {'rtf':>8} {'x torch':>8}")
    for row in result["rows"]:
        ratio = row["speedup_vs_torch_3s"]
        print(
            f"{row['model']:6} {row['clip_s']:6.0f} {row['threads']:3d} {row['median_ms']:10.2f} {row['p90_ms']:8.2f} "
            f"{row['rtf']:8.4f} {'' if ratio is None else f'{ratio:.2f}x':>8}"
        )
    return 0
