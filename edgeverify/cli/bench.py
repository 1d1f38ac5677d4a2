"""`edgeverify bench`: latency, real-time factor, the same run's int8 floor, load time, RSS and model size."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("bench", help="measure per-clip latency, RTF, int8 floor, load time, RSS, model size")
    parser.add_argument("--json", action="store_true", help="print one JSON object with a 'rows' list")
    parser.add_argument(
        "--models", default="campp-int8,campp-fp32,ecapa-int8,ecapa-fp32",
        help="comma-separated models to measure: campp-int8, campp-fp32, ecapa-int8, ecapa-fp32 (int8/fp32: the default model) "
        "or .onnx paths; one that is not built is skipped with a line saying so (default: all four)",
    )
    parser.add_argument("--threads", default="1,2,4", help="comma-separated thread counts (default 1,2,4)")
    parser.add_argument("--clips", default="3,10", help="comma-separated clip lengths in seconds (default 3,10)")
    parser.add_argument("--runs", type=int, default=15, help="timed runs per 3 s cell (longer clips: a third)")
    parser.add_argument("--no-rss", action="store_true", help="skip the RSS measurements (verify, service process)")
    parser.add_argument(
        "--speechbrain-python", default=None, metavar="PYTHON",
        help="python of a separate venv with torch + speechbrain: also time SpeechBrain's pipeline in this run",
    )
    parser.add_argument("--checkpoint", type=Path, default=None, help="embedding_model.ckpt for --speechbrain-python")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..tools.bench import run_bench

    result = run_bench(
        models=[m for m in args.models.split(",") if m],
        clips=[float(c) for c in args.clips.split(",") if c],
        threads=[int(t) for t in args.threads.split(",") if t],
        runs=args.runs,
        measure_rss=not args.no_rss,
        speechbrain_python=args.speechbrain_python,
        checkpoint=args.checkpoint,
    )
    if args.json:
        print(json.dumps(result))
        return 0
    cpu = result["cpu_int8"]
    load = result["loadavg_1min"]
    print(f"CPU: {result['cpu']} ({cpu['cores']} cores), int8 path: {cpu['int8_path']}; "
          f"threads: auto = {result['threads_auto']}; load average {load['start']} -> {load['end']}")
    floor = result["floor"]
    print(f"int8 floor: {floor['conv']}: {floor['conv_cpu_ms']} ms = {floor['gmac_per_s']} GMAC/s")
    for skipped in result["skipped"]:
        print(f"{skipped['name']}: skipped, {skipped['reason']}")
    for name, info in result["models"].items():
        print(f"{name}{' (default)' if info['default'] else ''}: {info['file_mb']} MB, load {info['load_ms']} ms, "
              f"{info.get('gmac_3s')} GMAC per 3 s -> floor {info.get('floor_ms_3s')} ms; verify peak RSS (two 3 s / 10 s clips) "
              f"{info.get('verify_peak_rss_mb')} / {info.get('verify_peak_rss_mb_10s')} MB, service RSS {info.get('service_rss')}, "
              f"20 s request {info.get('service_rss_20s')}")
    if "speechbrain" in result:
        print(f"SpeechBrain: {result['speechbrain']}")
    print(f"{'model':11} {'clip_s':>6} {'thr':>3} {'median_ms':>10} {'cpu_ms':>8} {'p90_ms':>8} {'ms/s':>7} {'rtf':>8}")
    for row in result["rows"]:
        cpu_ms = "" if row["cpu_median_ms"] is None else f"{row['cpu_median_ms']:.2f}"  # one thread only
        print(
            f"{row['name'][:11]:11} {row['clip_s']:6.0f} {row['threads']:3d} {row['median_ms']:10.2f} {cpu_ms:>8} "
            f"{row['p90_ms']:8.2f} {row['ms_per_audio_s']:7.2f} {row['rtf']:8.4f}"
        )
    print("ratios (1 thread, CPU time): " + ", ".join(f"{k} {v}" for k, v in result["ratios"].items()))
    for name, checks in result["goals"].items():
        print(f"goals of the default model, for {name}{' (the default)' if checks['default'] else ''}:")
        for goal in (v for v in checks.values() if isinstance(v, dict)):
            verdict = "not measured" if goal["met"] is None else ("met" if goal["met"] else "NOT met")
            print(f"  {goal['what']}: {goal['value']} (goal {goal['goal']}): {verdict}")
    return 0
