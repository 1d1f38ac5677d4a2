"""Gate mode measured: how often TV-like babble is let through as an enrolled person, and how often the
household itself is stopped while the TV talks in the background.

    python -m edgeverify.tools.gate --speech-dir ../shared/data/speech --model int8 --json /tmp/gate.json

Gate mode (`wyoming.reject_unknown`) passes an utterance on only when open-set identification names one
of the enrolled profiles. This tool runs that same decision (Verifier.identify over every profile of a
household, calibrated scores, the daemon's operating point) on audio it makes from the shared dev set:

  households  --households groups of --household-size speakers, drawn by --seed from the dev speakers
              with at least 6 clips (not EmoDB's 2 s clips); each enrolled from 3 of its clips, as
              `edgeverify enroll` does (one embedding per clip, scored clip by clip)
  babble      the "speaker" is a mixture of 3-6 other dev speakers (never an enrolled one, never the same
              person twice), --seconds long:
                equal     every voice at the same speech level, dry
                unequal   one voice dominant, the others 3-15 dB lower, dry
                tv-room   equal or unequal, with a synthetic music bed 5-15 dB under the voices, played
                          through a simulated living room (TV 2-4 m from the microphone; pyroomacoustics,
                          `pip install 'edgeverify[degrade]'`; without it the condition is left out)
              each clip is presented to every household: let through = anyone named
  genuine     every enrolled speaker's other clips, clean and with tv-room babble at 10/5/0 dB SNR
              (speech-active power), identified in the speaker's own household: accepted = own name

Operating points: `eer` (the daemon's default: each profile at the calibrated EER point) and each
--target-far (the open-set false-alarm rate over the household, as configured with target_far).
The audio is deterministic in --seed and independent of the model, so two models see the same clips.
Clips the VAD refuses (no speech, too short) count as stopped, as in the proxy.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..core.audio import TARGET_RATE, audio_from_array, read_audio
from ..core.scoring import Scorer, check_target_far
from ..core.vad import speech_segments
from ..core.verifier import EMBEDDING_VAD, Verifier
from ..errors import AudioError

BABBLE_CONDITIONS = ("equal", "unequal", "tv-room")
GENUINE_SNRS: Tuple[Optional[float], ...] = (None, 10.0, 5.0, 0.0)  # None: no TV
ENROLL_CLIPS = 3
MIN_CLIPS = 6  # an enrolled speaker needs 3 clips to enroll and at least 3 to test
OUTPUT_DBFS = -26.0  # speech level of every presented clip (a satellite's AGC-ed input)
N_ROOMS = 16  # simulated rooms, reused round-robin (the image method is slow on 2 cores)

Side = Tuple[np.ndarray, object]


# -- speakers ----------------------------------------------------------------------------------------


def speaker_files(dev: Path) -> Dict[str, List[str]]:
    """speaker -> sorted clip paths relative to dev/."""
    out: Dict[str, List[str]] = {}
    for d in sorted(p for p in Path(dev).iterdir() if p.is_dir()):
        wavs = sorted(f"{d.name}/{w.name}" for w in d.glob("*.wav"))
        if wavs:
            out[d.name] = wavs
    return out


def split_speakers(files: Dict[str, List[str]], n_enrolled: int, seed: int) -> Tuple[List[str], List[str]]:
    """(enrolled speakers in household order, babble pool): disjoint, drawn by `seed`."""
    eligible = sorted(s for s, f in files.items() if len(f) >= MIN_CLIPS and not s.startswith("emodb"))
    if n_enrolled > len(eligible):
        raise SystemExit(f"only {len(eligible)} speakers have {MIN_CLIPS} clips; asked to enroll {n_enrolled}")
    rng = np.random.default_rng([seed, 1])
    enrolled = [eligible[i] for i in rng.permutation(len(eligible))[:n_enrolled]]
    pool = sorted(set(files) - set(enrolled))
    return enrolled, pool


def enroll_split(clips: Sequence[str], seed: int, speaker: str) -> Tuple[List[str], List[str]]:
    """(3 enrollment clips, the rest for tests) of one speaker, drawn by `seed`."""
    rng = np.random.default_rng([seed, 2, *speaker.encode()])
    order = [clips[i] for i in rng.permutation(len(clips))]
    return sorted(order[:ENROLL_CLIPS]), sorted(order[ENROLL_CLIPS:])


# -- audio -------------------------------------------------------------------------------------------


def speech_power(x: np.ndarray) -> float:
    """Mean power of the VAD's speech regions (the whole clip when it finds none)."""
    segs = speech_segments(np.asarray(x, dtype=np.float32), TARGET_RATE, EMBEDDING_VAD)
    active = np.concatenate([x[s:e] for s, e in segs]) if segs else x
    return float(np.mean(np.asarray(active, dtype=np.float64) ** 2)) + 1e-12


def place(src: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n samples of `src` from a random offset, looped when it is shorter (a voice that keeps talking)."""
    reps = np.tile(src, int(math.ceil(n / src.size)) + 1)
    off = int(rng.integers(0, src.size))
    return reps[off : off + n]


def mix(voices: Sequence[np.ndarray], powers: Sequence[float], levels_db: Sequence[float]) -> np.ndarray:
    """Sum of equal-length voices, each scaled so its speech power is levels_db relative to the others."""
    out = np.zeros(len(voices[0]))
    for v, p, level in zip(voices, powers, levels_db):
        out += np.asarray(v, dtype=np.float64) * math.sqrt(10 ** (level / 10) / p)
    return out


def music_bed(n: int, rng: np.random.Generator) -> np.ndarray:
    """A synthetic soundtrack: a chord progression of harmonic notes, a bass line and hi-hat noise bursts.

    Made here from numbers (no files): stationary music is the other half of what a TV plays."""
    t = np.arange(n) / TARGET_RATE
    beat = 60.0 / rng.uniform(80, 140)
    root = int(rng.choice([43, 45, 48, 50, 52, 53, 55]))
    progression = [0, int(rng.choice([5, 7, 9])), int(rng.choice([3, 5, 7])), int(rng.choice([0, 2, 7]))]
    out = np.zeros(n)
    bar = 4 * beat
    for i, start in enumerate(np.arange(0, n / TARGET_RATE, beat)):
        chord = root + progression[int(start // bar) % 4]
        seg = (t >= start) & (t < start + beat)
        tt = t[seg] - start
        env = np.exp(-tt / (0.6 * beat))
        notes = [chord + 12, chord + 16 if rng.random() < 0.5 else chord + 15, chord + 19]
        if i % 2 == 0:
            notes.append(chord - 12)  # bass on every other beat
        for m in notes:
            f = 440.0 * 2 ** ((m - 69) / 12)
            for h in range(1, 7):
                if f * h < TARGET_RATE / 2:
                    out[seg] += env * np.sin(2 * np.pi * f * h * tt + rng.uniform(0, 2 * np.pi)) / h
        for half in (0.0, beat / 2):  # hi-hat: short bursts of high-passed noise
            hs = (t >= start + half) & (t < start + half + 0.05)
            burst = np.diff(rng.standard_normal(int(hs.sum()) + 1))
            out[hs] += 0.3 * burst * np.exp(-np.arange(burst.size) / (0.01 * TARGET_RATE))
    return out


def room_impulse_responses(count: int, rng: np.random.Generator) -> Optional[List[np.ndarray]]:
    """Living rooms with a TV 2-4 m from the microphone (image method); None without pyroomacoustics."""
    try:
        import pyroomacoustics as pra
    except ImportError:
        return None
    rirs = []
    while len(rirs) < count:
        rt60 = rng.uniform(0.3, 0.6)
        room = np.array([rng.uniform(3.5, 7), rng.uniform(3, 6), rng.uniform(2.4, 3.0)])
        absorption, max_order = pra.inverse_sabine(rt60, room)
        mic = np.array([rng.uniform(0.5, room[0] - 0.5), rng.uniform(0.5, room[1] - 0.5), rng.uniform(0.7, 1.2)])
        d, ang = rng.uniform(2.0, 4.0), rng.uniform(0, 2 * np.pi)
        tv = mic + np.array([d * np.cos(ang), d * np.sin(ang), 0.0])
        tv[2] = rng.uniform(0.8, 1.3)
        if not (np.all(tv > 0.3) and np.all(tv < room - 0.3)):
            continue
        r = pra.ShoeBox(room, fs=TARGET_RATE, materials=pra.Material(absorption), max_order=min(max_order, 20))
        r.add_source(tv.tolist())
        r.add_microphone(mic.tolist())
        r.compute_rir()
        rirs.append(np.asarray(r.rir[0][0], dtype=np.float64))
    return rirs


def convolve(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    from scipy.signal import fftconvolve

    return fftconvolve(x, h)[: x.size]


def to_int16(x: np.ndarray, speech_dbfs: Optional[float] = OUTPUT_DBFS) -> np.ndarray:
    """What a satellite sends: speech at a fixed level (when given), 16-bit PCM."""
    x = np.asarray(x, dtype=np.float64)
    if speech_dbfs is not None:
        x = x * math.sqrt(10 ** (speech_dbfs / 10) / speech_power(x))
    return np.round(np.clip(x, -1.0, 32767 / 32768) * 32768).astype(np.int16)


@dataclass
class Pool:
    """The babble speakers' clean clips (16 kHz float) and their speech powers, read once."""

    clips: Dict[str, List[np.ndarray]]
    powers: Dict[str, List[float]]

    @classmethod
    def read(cls, dev: Path, files: Dict[str, List[str]], speakers: Sequence[str]) -> "Pool":
        clips, powers = {}, {}
        for s in speakers:
            clips[s] = [read_audio(Path(dev) / f).samples.astype(np.float64) for f in files[s]]
            powers[s] = [speech_power(c) for c in clips[s]]
        return cls(clips, powers)

    def voices(self, k: int, n: int, rng: np.random.Generator) -> Tuple[List[str], List[np.ndarray], List[float]]:
        """k different speakers, one clip each, placed on n samples."""
        names = sorted(self.clips)
        chosen = [names[i] for i in rng.choice(len(names), size=k, replace=False)]
        voices, powers = [], []
        for s in chosen:
            j = int(rng.integers(0, len(self.clips[s])))
            voices.append(place(self.clips[s][j], n, rng))
            powers.append(self.powers[s][j])
        return chosen, voices, powers


def babble(pool: Pool, condition: str, n: int, rng: np.random.Generator,
           rirs: Optional[List[np.ndarray]], index: int) -> Tuple[np.ndarray, dict]:
    """One TV-like babble clip of n samples, and what went into it."""
    k = int(rng.integers(3, 7))
    names, voices, powers = pool.voices(k, n, rng)
    unequal = condition == "unequal" or (condition == "tv-room" and rng.random() < 0.5)
    levels = [0.0] * k
    if unequal:
        levels = [0.0] + [float(rng.uniform(-15.0, -3.0)) for _ in range(k - 1)]
    x = mix(voices, powers, levels)
    meta: dict = {"speakers": names, "levels_db": [round(v, 1) for v in levels]}
    if condition == "tv-room":
        music = music_bed(n, rng)
        smr = float(rng.uniform(5.0, 15.0))
        x = x + music * math.sqrt(speech_power(x) / (np.mean(music**2) + 1e-12) / 10 ** (smr / 10))
        meta["speech_to_music_db"] = round(smr, 1)
        if rirs:
            x = convolve(x, rirs[index % len(rirs)])
            meta["room"] = index % len(rirs)
    elif condition not in BABBLE_CONDITIONS:
        raise ValueError(f"unknown babble condition {condition!r}")
    return x, meta


def with_tv(speech: np.ndarray, tv: np.ndarray, snr_db: float) -> np.ndarray:
    """speech + tv, the tv scaled to snr_db below the speech's speech-active power."""
    gain = math.sqrt(speech_power(speech) / (np.mean(tv**2) + 1e-12) / 10 ** (snr_db / 10))
    return speech + gain * tv


# -- decisions ---------------------------------------------------------------------------------------


def profile_side(scorer: Optional[Scorer], embeddings: Sequence[np.ndarray], speech_s: Sequence[float]) -> Side:
    """A profile as the profile store prepares it for scoring: the re-normalised mean embedding, the
    per-clip embeddings (scored clip by clip) and the mean clip speech as quality term."""
    vecs = np.stack([np.asarray(e, dtype=np.float64) / np.linalg.norm(e) for e in embeddings])
    mean = vecs.mean(axis=0)
    mean /= np.linalg.norm(mean)
    side = None
    if scorer is not None:
        side = scorer.side(mean, float(np.mean(speech_s)), "16k", None, clips=vecs)
    return mean, side


def operating_points(target_fars: Sequence[float]) -> List[Tuple[str, Optional[float]]]:
    return [("eer", None)] + [(f"far={f:g}", float(f)) for f in target_fars]


def gate(verifier: Verifier, test: Optional[Side], household: Dict[str, Side],
         target_far: Optional[float]) -> Optional[str]:
    """Whom gate mode lets through: the name identification gives, None = stopped (also for no speech)."""
    if test is None:
        return None
    return verifier.identify(test, household, target_far=target_far)[0]


def embed(verifier: Verifier, pcm: np.ndarray, name: str) -> Tuple[Optional[Side], Optional[str]]:
    """The Wyoming path: 16-bit samples -> audio -> VAD check -> embedding and calibrated side."""
    try:
        return verifier.prepare(audio_from_array(pcm, TARGET_RATE, name=name)), None
    except AudioError as exc:
        return None, exc.code


@dataclass
class Tally:
    """Counts per operating point."""

    trials: int = 0
    hits: Dict[str, int] = field(default_factory=dict)
    wrong_name: Dict[str, int] = field(default_factory=dict)  # genuine only: named as another member
    vad_refused: int = 0

    def add(self, point: str, hit: bool, wrong: bool = False) -> None:
        self.hits[point] = self.hits.get(point, 0) + int(hit)
        self.wrong_name[point] = self.wrong_name.get(point, 0) + int(wrong)

    def to_dict(self) -> dict:
        percent = {p: round(100.0 * h / self.trials, 2) if self.trials else None for p, h in self.hits.items()}
        return {"trials": self.trials, "hits": self.hits, "wrong_name": self.wrong_name,
                "vad_refused": self.vad_refused, "percent": percent}


def measure(verifier: Verifier, speech_dir: Path, seed: int = 18, households: int = 6, household_size: int = 4,
            babble_clips: int = 150, seconds: Tuple[float, float] = (3.0, 6.0),
            target_fars: Sequence[float] = (0.01,), conditions: Sequence[str] = BABBLE_CONDITIONS,
            log: Callable[[str], None] = lambda m: None) -> dict:
    """Run the whole measurement; returns counts and rates per condition and operating point."""
    started = time.perf_counter()
    dev = Path(speech_dir) / "dev"
    files = speaker_files(dev)
    enrolled, pool_names = split_speakers(files, households * household_size, seed)
    pool = Pool.read(dev, files, pool_names)
    points = operating_points(target_fars)
    rirs = room_impulse_responses(N_ROOMS, np.random.default_rng([seed, 3]))  # the TV of every tv condition
    if rirs is None:
        log("pyroomacoustics not installed: the TV plays without a room (music bed only)")

    # enrollment, as `edgeverify enroll` does it
    homes: List[Dict[str, Side]] = [{} for _ in range(households)]
    tests: Dict[str, List[str]] = {}
    for i, s in enumerate(enrolled):
        enroll_clips, tests[s] = enroll_split(files[s], seed, s)
        embs, secs = [], []
        for f in enroll_clips:
            e, sec = verifier.embed_with_speech(read_audio(dev / f))
            embs.append(e)
            secs.append(sec)
        homes[i // household_size][s] = profile_side(verifier.scorer, embs, secs)
    log(f"enrolled {len(enrolled)} speakers in {households} households of {household_size}")

    # babble as the speaker
    babble_out: Dict[str, dict] = {}
    single = {c: Tally() for c in conditions}  # every enrolled profile alone (a household of one)
    for c in conditions:
        tally = Tally()
        for j in range(babble_clips):
            rng = np.random.default_rng([seed, 4, BABBLE_CONDITIONS.index(c), j])
            n = int(rng.uniform(*seconds) * TARGET_RATE)
            x, _ = babble(pool, c, n, rng, rirs, j)
            test, refused = embed(verifier, to_int16(x), f"babble-{c}-{j}")
            tally.vad_refused += int(refused is not None)
            tally.trials += households
            single[c].trials += len(enrolled)
            single[c].vad_refused += int(refused is not None)
            for name, far in points:
                for home in homes:
                    tally.add(name, gate(verifier, test, home, far) is not None)
                    for s in home:
                        single[c].add(name, gate(verifier, test, {s: home[s]}, far) is not None)
        babble_out[c] = tally.to_dict()
        log(f"babble {c}: {babble_out[c]['hits']} let through of {tally.trials}")

    # the household with the TV on
    genuine_out: Dict[str, dict] = {}
    for snr in GENUINE_SNRS:
        key = "clean" if snr is None else f"tv {snr:g} dB"
        tally = Tally()
        for home in homes:
            for s in home:
                for f in tests[s]:
                    x = read_audio(dev / f).samples.astype(np.float64)
                    if snr is not None:
                        rng = np.random.default_rng([seed, 5, enrolled.index(s), files[s].index(f), int(snr)])
                        tv, _ = babble(pool, "tv-room", x.size, rng, rirs, int(rng.integers(0, N_ROOMS)))
                        x = with_tv(x, tv, snr)
                    test, refused = embed(verifier, to_int16(x), f)
                    tally.trials += 1
                    tally.vad_refused += int(refused is not None)
                    for name, far in points:
                        who = gate(verifier, test, home, far)
                        tally.add(name, who == s, wrong=who is not None and who != s)
        genuine_out[key] = tally.to_dict()
        log(f"genuine {key}: {genuine_out[key]['hits']} accepted of {tally.trials}")

    return {
        "model": verifier.model_name,
        "model_file": str(verifier.embedder.path),
        "seed": seed,
        "households": households,
        "household_size": household_size,
        "enrolled": enrolled,
        "babble_pool_speakers": len(pool_names),
        "babble_clips_per_condition": babble_clips,
        "babble_seconds": list(seconds),
        "room": rirs is not None,
        "operating_points": [p for p, _ in points],
        "babble": babble_out,
        "babble_single_profile": {c: t.to_dict() for c, t in single.items()},
        "genuine": genuine_out,
        "machine": f"{platform.machine()} {platform.processor() or ''} {cpu_name()}".strip(),
        "seconds": round(time.perf_counter() - started, 1),
    }


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def table(result: dict) -> str:
    """Markdown rows: model | operating point | condition | let through (babble) or accepted (genuine)."""
    rows = ["| model | operating point | condition | babble let through | genuine accepted |", "|---|---|---|---|---|"]
    def cell(t: dict, p: str) -> str:
        return f"{t['percent'][p]:.1f} % ({t['hits'][p]}/{t['trials']})"

    for p in result["operating_points"]:
        for c, t in result["babble"].items():
            rows.append(f"| {result['model']} | {p} | babble {c} | {cell(t, p)} | |")
        for c, t in result["genuine"].items():
            rows.append(f"| {result['model']} | {p} | genuine, {c} | | {cell(t, p)} |")
    return "\n".join(rows)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edgeverify.tools.gate", description=__doc__.split("\n\n")[0])
    p.add_argument("--speech-dir", type=Path, default=Path("../shared/data/speech"))
    p.add_argument("--model", default="int8", help="model setting as in the config (int8, fp32, a name or a path)")
    p.add_argument("--seed", type=int, default=18)
    p.add_argument("--households", type=int, default=6)
    p.add_argument("--household-size", type=int, default=4)
    p.add_argument("--babble-clips", type=int, default=150, help="babble clips per condition")
    p.add_argument("--target-far", default="0.01", help="comma list of open-set target_far points (besides eer)")
    p.add_argument("--conditions", default=",".join(BABBLE_CONDITIONS))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, help="write the full result here")
    a = p.parse_args(argv)
    counts = (("--households", a.households), ("--household-size", a.household_size), ("--babble-clips", a.babble_clips))
    for n, v in counts:
        if v < 1:
            p.error(f"{n} must be at least 1")
    conditions = [c for c in a.conditions.split(",") if c]
    bad = [c for c in conditions if c not in BABBLE_CONDITIONS]
    if bad:
        p.error(f"unknown condition(s) {', '.join(bad)} (use {', '.join(BABBLE_CONDITIONS)})")
    try:
        fars = [check_target_far(float(f)) for f in a.target_far.split(",") if f]
    except ValueError as exc:
        p.error(f"--target-far: a comma list of rates ({exc})")
    if not (a.speech_dir / "dev").is_dir():
        p.error(f"{a.speech_dir / 'dev'} not found (--speech-dir: the shared speech data)")
    verifier = Verifier.load(a.model, threads=a.threads)
    result = measure(verifier, a.speech_dir, a.seed, a.households, a.household_size, a.babble_clips,
                     target_fars=fars, conditions=conditions, log=lambda m: print(m, file=sys.stderr, flush=True))
    if a.json:
        a.json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
