"""Degraded trial sets derived from the shared 16 kHz dev set: short commands, noise, reverberation.

    python -m edgeverify.tools.degrade --speech-dir ../shared/data/speech --out /tmp/edgeverify-degraded
    edgeverify eval --root /tmp/edgeverify-degraded --trials /tmp/edgeverify-degraded/<condition>/trials.txt

Only the test side (second column of dev/trials.txt) is degraded; enrollment stays clean, as in a home
where people enroll once in a quiet moment. Conditions (all deterministic, seeded per file):
  short      test clip cut to 1.5-2.0 s starting where the VAD finds speech
  snr20/10/5 additive noise at that SNR (speech-active power): stationary coloured noise for half the
             files, babble of 4 other dev speakers for the other half
  reverb     convolved with a simulated living-room impulse response (pyroomacoustics image method,
             RT60 0.3-0.7 s, random room 3-7 m wide, source 1-3 m from the mic); needs `pip install
             'edgeverify[degrade]'`
Output is written under --out (never commit it): dev/ links to the clean set, <condition>/ holds the
degraded test clips and trials.txt with paths relative to --out.
"""

from __future__ import annotations

import argparse
import os
import sys
import zlib
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
import soundfile as sf

from ..core.audio import TARGET_RATE, read_audio
from ..core.vad import speech_segments
from ..core.verifier import EMBEDDING_VAD

CONDITIONS = ("short", "snr20", "snr10", "snr5", "reverb")


def _rng(name: str, condition: str) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(f"{condition}:{name}".encode()))


def _speech_power(x: np.ndarray) -> float:
    segs = speech_segments(x, TARGET_RATE, EMBEDDING_VAD)
    active = np.concatenate([x[s:e] for s, e in segs]) if segs else x
    return float(np.mean(active.astype(np.float64) ** 2)) + 1e-12


def short(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    segs = speech_segments(x, TARGET_RATE, EMBEDDING_VAD)
    start = max(0, segs[0][0] - int(0.1 * TARGET_RATE)) if segs else 0
    return x[start : start + int(rng.uniform(1.5, 2.0) * TARGET_RATE)]


def coloured_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Stationary noise with a falling spectrum (between pink and brown: fans, fridges, traffic hum)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / TARGET_RATE)
    spec /= np.maximum(f, 50.0) ** rng.uniform(0.5, 1.0)
    return np.fft.irfft(spec, n)


def babble(n: int, pool: List[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    out = np.zeros(n)
    for i in rng.choice(len(pool), size=4, replace=False):
        src = pool[i]
        reps = np.tile(src, int(np.ceil(n / src.size)) + 1)
        off = int(rng.integers(0, src.size))
        seg = reps[off : off + n]
        out += seg / (np.sqrt(np.mean(seg**2)) + 1e-9)
    return out


def add_noise(x: np.ndarray, snr_db: float, noise: np.ndarray) -> np.ndarray:
    gain = np.sqrt(_speech_power(x) / (np.mean(noise**2) + 1e-12) / 10 ** (snr_db / 10))
    return x + gain * noise


def reverb(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    try:
        import pyroomacoustics as pra
    except ImportError as exc:
        raise SystemExit("reverb needs pyroomacoustics: pip install 'edgeverify[degrade]'") from exc
    rt60 = rng.uniform(0.3, 0.7)
    room = np.array([rng.uniform(3, 7), rng.uniform(3, 6), rng.uniform(2.4, 3.0)])
    absorption, max_order = pra.inverse_sabine(rt60, room)
    r = pra.ShoeBox(room, fs=TARGET_RATE, materials=pra.Material(absorption), max_order=min(max_order, 30))
    mic = np.array([rng.uniform(0.5, room[0] - 0.5), rng.uniform(0.5, room[1] - 0.5), rng.uniform(0.7, 1.5)])
    for _ in range(100):  # a source 1-3 m from the mic, inside the room
        d = rng.uniform(1.0, 3.0)
        ang = rng.uniform(0, 2 * np.pi)
        src = mic + np.array([d * np.cos(ang), d * np.sin(ang), rng.uniform(-0.2, 0.5)])
        if np.all(src > 0.3) and np.all(src < room - 0.3):
            break
    else:
        src = room / 2
    r.add_source(src.tolist())
    r.add_microphone(mic.tolist())
    r.compute_rir()
    h = np.asarray(r.rir[0][0])
    y = np.convolve(x, h)[: x.size]
    return y * np.sqrt(np.mean(x**2) / (np.mean(y**2) + 1e-12))


def derive(speech_dir: Path, out: Path, conditions: List[str], log: Callable[[str], None] = print) -> Dict[str, int]:
    dev = Path(speech_dir) / "dev"
    out.mkdir(parents=True, exist_ok=True)
    link = out / "dev"
    if not link.exists():
        os.symlink(dev.resolve(), link)
    trials = [line.split() for line in (dev / "trials.txt").read_text().splitlines() if line.strip()]
    tests = sorted({t[2] for t in trials})
    clean = {name: read_audio(dev / name).samples.astype(np.float64) for name in sorted({t[1] for t in trials} | set(tests))}
    written: Dict[str, int] = {}
    for cond in conditions:
        d = out / cond
        for name in tests:
            rng = _rng(name, cond)
            x = clean[name]
            if cond == "short":
                y = short(x, rng)
            elif cond.startswith("snr"):
                if rng.random() < 0.5:
                    noise = coloured_noise(x.size, rng)
                else:
                    spk = name.split("/")[0]
                    pool = [v for k, v in clean.items() if k.split("/")[0] != spk and not k.startswith(("emodb", "ls-"))]
                    pool = [pool[i] for i in rng.choice(len(pool), size=12, replace=False)]
                    noise = babble(x.size, pool, rng)
                y = add_noise(x, float(cond[3:]), noise)
            elif cond == "reverb":
                y = reverb(x, rng)
            else:
                raise SystemExit(f"unknown condition {cond!r} (use {', '.join(CONDITIONS)})")
            y = np.clip(y, -1.0, 1.0)
            (d / name).parent.mkdir(parents=True, exist_ok=True)
            sf.write(d / name, y.astype(np.float32), TARGET_RATE, subtype="PCM_16")
        with open(d / "trials.txt", "w", encoding="utf-8") as fh:
            for label, a, b in trials:
                fh.write(f"{label} dev/{a} {cond}/{b}\n")
        written[cond] = len(tests)
        log(f"{cond}: {len(tests)} test clips -> {d}")
    return written


def main(argv: List[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edgeverify.tools.degrade", description=__doc__.split("\n\n")[0])
    p.add_argument("--speech-dir", type=Path, default=Path("../shared/data/speech"))
    p.add_argument("--out", type=Path, required=True, help="output folder (outside the repository)")
    p.add_argument("--conditions", default=",".join(CONDITIONS), help=f"comma list of {', '.join(CONDITIONS)}")
    a = p.parse_args(argv)
    derive(a.speech_dir, a.out, [c for c in a.conditions.split(",") if c], lambda m: print(m, file=sys.stderr))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
