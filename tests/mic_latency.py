"""Opt-in benchmark (not collected by pytest): end of speech -> MQTT event, on the microphone path.

    PYTHONPATH=. .venv/bin/python tests/mic_latency.py [--clips 6] [--json]

Everything is real: mosquitto (tests/broker.py), a private PulseAudio null sink as the microphone
(tests/virtual_mic.py: ALSA pulse plugin -> PortAudio, the layers a USB microphone goes through),
`python -m edgeverify run` with the microphone on (mode identify, two enrolled profiles, log_level debug)
and a paho subscriber on <prefix>/<device>/event. Recordings from the shared dev set, of different
lengths, each one utterance for the cutter, are played one at a time with paplay, 1 s of silence between.

When speech ends: the daemon's own cutter (vad.UtteranceCutter, microphone defaults), run offline over the
file after silence as in the live stream, gives the end of the last frame its VAD took as speech (before
hangover) and where it cuts; clips whose cut or end of speech depends on the context are not used. When
that sample reached the "microphone": a reference recorder (parec, 5 ms latency) reads the sink's monitor
beside the daemon and stamps every chunk as it arrives; the file is found in its stream by
cross-correlation of the clip's last 1.5 s of speech (bit-exact past a stream's first ms), so the instant is
observed, not inferred from paplay's start (its start-up varies by up to 1 s) or exit (which comes 20-90 ms
after the last sample: reported as `paplay_lag_ms`). That instant is late by the recorder's latency plus
one read, ~5-10 ms at 5 ms (more when the machine is loaded), so the totals are that much low; with
--ref-latency-ms 20 the reference itself stamps ~10-20 ms later and `capture` turns slightly negative.
The first paplay after PulseAudio starts stalls ~1 s and garbles parts of the stream, so a quiet warm-up
clip (below the VAD's absolute floor) is played first.

Per clip (ms), from the reference stamps, the daemon's debug log (1 ms stamps, same clock) and the event:
  total       end of speech -> event received (paho's receive stamp)
  vad_wait    the cutter's designed wait, offline: hangover 150 + min_gap 300 + frame rounding
  capture     log line "utterance:" (the cut) - end of speech - vad_wait: PulseAudio, ALSA and PortAudio
              buffering, 20 ms blocks; what a real microphone's driver adds instead is not measured here
  queued      the utterance waiting for the worker (log line "microphone decision:")
  decide      VAD check + features + model + scoring (the event's elapsed_ms)
  deliver     total - the rest: JSON, publish, the broker hop, paho's receive
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))

REPO = Path(__file__).resolve().parents[1]
SPEECH = Path(os.environ.get("EDGEVERIFY_SPEECH_DIR", REPO.parent / "shared" / "data" / "speech"))
RATE = 16000
LEAD_S = 1.0  # silence before each clip (the live stream has at least this much; the VAD floor settles in it)
ENROLL = {"alice": "vctk-p225", "bob": "vctk-p226"}  # profiles: the first 3 dev files of each speaker
EVENT_TIMEOUT_S = 10.0  # after the cut is due


@dataclass(frozen=True)
class Clip:
    """A recording and what the daemon's cutter makes of it (times in seconds from the file's start)."""

    path: Path
    speaker: str
    duration_s: float
    speech_end_s: float  # end of the last frame the VAD took as speech, before hangover
    cut_s: float  # where the cutter ends the utterance (hangover + min_gap later)
    samples: np.ndarray = field(repr=False, compare=False)


@dataclass
class ClipResult:
    file: str
    duration_s: float
    speech_end_s: float
    vad_wait_ms: float
    total_ms: Optional[float] = None  # None: no event
    capture_ms: Optional[float] = None
    queued_ms: Optional[float] = None
    decide_ms: Optional[float] = None
    deliver_ms: Optional[float] = None
    paplay_lag_ms: Optional[float] = None  # paplay exit - arrival of the file's last sample (the rejected anchor)
    events: int = 0  # events during this clip (1 expected)
    utterance_s: Optional[float] = None  # what the daemon cut and scored (pre-roll and padding included)
    speaker: Optional[str] = None
    anchor_correlation: float = 0.0  # the file against the reference stream (1.0 = bit-exact)


def _cutter() -> Any:
    """The cutter exactly as the daemon builds it from the default microphone config."""
    from edgeverify.core.vad import UtteranceCutter, VadConfig
    from edgeverify.store.config import MicrophoneConfig

    mic = MicrophoneConfig()
    return UtteranceCutter(RATE, VadConfig(**dataclasses.asdict(mic.vad)), mic.pre_roll_s, mic.min_utterance_s,
                           mic.max_utterance_s)


def cut_points(x: np.ndarray, lead_s: float = LEAD_S, skip: int = 0) -> tuple[list[tuple[float, float]], float]:
    """Offline run of the daemon's cutter over silence + x[skip:] + silence, one frame at a time.

    Returns ([(speech_end_s, cut_s)] per delivered utterance, end of the last speech frame anywhere), in
    seconds of the file (skip counted back in).
    """
    cutter = _cutter()
    fl = cutter.frame_len
    lead = int(lead_s * RATE)
    stream = np.concatenate([np.zeros(lead, np.float32), x[skip:].astype(np.float32), np.zeros(2 * RATE, np.float32)])
    to_file = lambda n: (n - lead + skip) / RATE  # noqa: E731 -- stream sample count -> file seconds
    out, last_speech = [], 0
    for i in range(0, stream.size - fl + 1, fl):
        done = cutter.push(stream[i : i + fl])
        if cutter.vad.active:
            last_speech = i + fl
        if done:
            out.append((to_file(last_speech), to_file(i + fl)))
    return out, to_file(last_speech)


def analyse(path: Path, speaker: str) -> Optional[Clip]:
    """A Clip if the cutter takes the file as exactly one utterance, ended by silence, whatever the context.

    The live stream's frame phase and leading silence are not sample-exact, so the cut must be the same
    (within 20 ms) for several leads and frame offsets, and no speech may follow it (else "end of
    speech" would be ambiguous).
    """
    x, rate = sf.read(str(path), dtype="float32")
    if rate != RATE or x.ndim != 1 or abs(float(x.mean())) > 0.01:
        return None
    ends = []
    for lead in (0.5, LEAD_S, 2.0):
        for skip in (0, 80, 160):
            cuts, last = cut_points(x, lead, skip)
            if len(cuts) != 1 or abs(last - cuts[0][0]) > 1e-6:
                return None
            ends.append(cuts[0])
    if max(e for e, _ in ends) - min(e for e, _ in ends) > 0.02:
        return None
    [(speech_end, cut)], _ = cut_points(x)
    vad = _cutter().config
    if cut - speech_end > (vad.hangover_ms + vad.min_gap_ms) / 1000 + 0.05:  # forced at max_utterance_s
        return None
    return Clip(path, speaker, x.size / RATE, speech_end, cut, x)


def pick_clips(n: int, min_s: float = 2.0, max_s: float = 7.5, speech_dir: Path = SPEECH) -> list[Clip]:
    """n recordings spread over [min_s, max_s] of length, different speakers where possible, none enrolled."""
    rows = [r.split("\t") for r in (speech_dir / "dev" / "utterances.tsv").read_text().splitlines()[1:]]
    enrolled = {p for spk in ENROLL.values() for p in enrollment_files(spk, speech_dir)}
    cands = [(float(dur), speech_dir / "dev" / rel, spk) for rel, spk, dur, *_ in rows
             if min_s <= float(dur) <= max_s and speech_dir / "dev" / rel not in enrolled]
    targets = np.linspace(min_s, max_s, n) if n > 1 else [min_s]
    picked: list[Clip] = []
    rejected: set[Path] = set()
    for target in targets:
        order = sorted(cands, key=lambda c: abs(c[0] - target))[:40]
        for fresh_only in (True, False):
            clip = None
            for _, path, spk in order:
                if path in rejected or any(c.path == path or (fresh_only and c.speaker == spk) for c in picked):
                    continue
                clip = analyse(path, spk)
                if clip is not None:
                    break
                rejected.add(path)
            if clip is not None:
                picked.append(clip)
                break
    if len(picked) < n:
        raise RuntimeError(f"only {len(picked)} of {n} usable single-utterance recordings in {speech_dir}")
    return picked


def enrollment_files(speaker: str, speech_dir: Path = SPEECH) -> list[Path]:
    return sorted((speech_dir / "dev" / speaker).glob("*.wav"))[:3]


def enroll(state_dir: Path, model: Path, speech_dir: Path = SPEECH, verifier: Any = None) -> None:
    """Profiles for identify mode, as tests/test_daemon.py makes them."""
    from edgeverify.core.audio import read_audio
    from edgeverify.core.verifier import Verifier
    from edgeverify.store.profiles import ProfileStore

    v = verifier if verifier is not None else Verifier.load(str(model))
    store = ProfileStore(state_dir)
    for name, spk in ENROLL.items():
        store.enroll(name, [v.embed(read_audio(p)) for p in enrollment_files(spk, speech_dir)], model=v.model)


class MonitorRecorder:
    """parec on the virtual microphone's monitor, every chunk stamped (time.monotonic()) as it is read:
    the reference for when a played sample reached the microphone."""

    def __init__(self, env: dict[str, str], latency_ms: int = 5) -> None:
        from virtual_mic import SINK

        self.proc = subprocess.Popen(
            ["parec", f"--device={SINK}.monitor", "--format=s16le", f"--rate={RATE}", "--channels=1", "--raw",
             f"--latency-msec={latency_ms}"], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )
        self._data = bytearray()
        self._ends: list[int] = []  # byte count after each read
        self._times: list[float] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        fd = self.proc.stdout.fileno()
        while True:
            b = os.read(fd, 65536)
            t = time.monotonic()
            if not b:
                return
            with self._lock:
                self._data += b
                self._ends.append(len(self._data))
                self._times.append(t)

    @property
    def samples(self) -> int:
        with self._lock:
            return len(self._data) // 2

    def stream(self, start: int) -> np.ndarray:
        with self._lock:
            n = len(self._data) // 2
            return np.frombuffer(bytes(self._data[2 * start : 2 * n]), dtype="<i2").astype(np.float32) / 32768

    def arrival(self, k: int) -> float:
        """When sample k had been read (the stamp of the read that completed it)."""
        with self._lock:
            i = int(np.searchsorted(np.asarray(self._ends), 2 * k + 2))
            return self._times[i]

    def locate(self, x: np.ndarray, since: int) -> tuple[int, float]:
        """(index of x's first sample in the stream, normalised correlation) searching from `since` on."""
        w = self.stream(since)
        if w.size < x.size:
            raise RuntimeError("the reference recorder has not seen the whole clip")
        n = 1 << int(np.ceil(np.log2(w.size + x.size)))
        c = np.fft.irfft(np.fft.rfft(w, n) * np.conj(np.fft.rfft(x, n)), n)[: w.size - x.size + 1]
        lag = int(np.argmax(c))
        seg = w[lag : lag + x.size]
        quality = float(c[lag] / (np.linalg.norm(x) * np.linalg.norm(seg) + 1e-12))
        return since + lag, quality

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._thread.join(2)


LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ [\w.]+: (.*)$")
DECISION = re.compile(r"microphone decision: ([\d.]+) s utterance, ([\d.]+) ms queued, ([\d.]+) ms to decide")


def log_events(text: str, wall_to_mono: float) -> list[tuple[float, str]]:
    """(monotonic time, message) of every stamped line of the daemon's log."""
    out = []
    for line in text.splitlines():
        m = LOG_LINE.match(line)
        if m:
            wall = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            out.append((wall + wall_to_mono, m.group(2)))
    return out


def sink_latency(env: dict[str, str]) -> dict[str, float]:
    """The null sink's configured latency from `pactl list sinks`: its render quantum, the smallest that a
    recording stream on its monitor asked for."""
    text = subprocess.run(["pactl", "list", "sinks"], env=env, capture_output=True, text=True).stdout
    m = re.search(r"Latency: \d+ usec, configured (\d+) usec", text)
    return {"configured_ms": int(m.group(1)) / 1000} if m else {}


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith(("model name", "Model")):
            return line.split(":", 1)[1].strip()
    return "unknown"


def measure(clips: list[Clip], workdir: Path, model: Path, verifier: Any = None, speech_dir: Path = SPEECH,
            ref_latency_ms: int = 5) -> dict[str, Any]:
    """Start broker, virtual microphone and daemon; play each clip; per-clip ClipResult and a summary.

    ref_latency_ms: what the reference recorder asks PulseAudio for. It also sets the null sink's render
    quantum (the daemon's ALSA stream alone gets 20 ms), so 20 shows whether the observer changes the figure.
    """
    import virtual_mic
    from broker import Broker, Hub
    from daemon_process import DaemonProcess

    state = workdir / "state"
    state.mkdir(parents=True, exist_ok=True)
    enroll(state, model, speech_dir, verifier)
    wall_to_mono = time.monotonic() - time.time()
    results: list[ClipResult] = []
    load_before = os.getloadavg()
    with Broker() as broker, virtual_mic.VirtualMic(RATE) as vm:
        ref = MonitorRecorder(vm.env, ref_latency_ms)
        try:
            mic = {"enabled": True, "device": "pulse", "mode": "identify"}
            d = DaemonProcess(workdir, broker.port, model, state, "lat1",
                              extra={"microphone": mic, "log_level": "debug"}, env_extra=vm.env)
            hub = Hub(broker.port)
            try:
                topic = f"{d.base}/event"
                hub.subscribe(topic)
                sink = sink_latency(vm.env)
                # the first paplay after PulseAudio starts stalls ~1 s and garbles parts of the stream: play
                # 0.5 s of noise at -75 dBFS (below the VAD's absolute floor, so no utterance) to get past it
                warm = workdir / "warm-up.wav"
                noise = np.random.default_rng(0).standard_normal(RATE // 2) * 10 ** (-75 / 20)
                sf.write(str(warm), noise.astype(np.float32), RATE, subtype="PCM_16")
                vm.play(warm)
                time.sleep(LEAD_S)
                for clip in clips:
                    results.append(_play_one(clip, vm, ref, hub, topic, d.log_path, wall_to_mono))
                    time.sleep(LEAD_S)
            finally:
                hub.close()
                code = d.stop()
        finally:
            ref.stop()
        if code != 0:
            raise RuntimeError(f"daemon exited {code}:\n{d.log_path.read_text()[-3000:]}")
    return {"clips": [dataclasses.asdict(r) for r in results], "summary": summarise(results),
            "cpu": cpu_model(), "cores": os.cpu_count(), "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(), "ref_latency_ms": ref_latency_ms, "sink": sink}


def _play_one(clip: Clip, vm: Any, ref: MonitorRecorder, hub: Any, topic: str, log_path: Path,
              wall_to_mono: float) -> ClipResult:
    import queue as _queue

    while True:  # forget events of earlier clips
        try:
            hub.messages.get_nowait()
        except _queue.Empty:
            break
    r = ClipResult(clip.path.name, round(clip.duration_s, 3), round(clip.speech_end_s, 3),
                   round(1000 * (clip.cut_s - clip.speech_end_s), 1))
    log_from = log_path.stat().st_size
    since = ref.samples
    vm.play(clip.path)
    exited = time.monotonic()
    time.sleep(0.2)  # the recorder's last reads
    end = int(round(clip.speech_end_s * RATE))  # located by the last 1.5 s of speech, where it matters
    begin = max(0, end - int(1.5 * RATE))
    at, quality = ref.locate(clip.samples[begin:end], since)
    start, r.anchor_correlation = at - begin, round(quality, 4)
    end_of_speech = ref.arrival(start + end - 1)
    r.paplay_lag_ms = round(1000 * (exited - ref.arrival(start + clip.samples.size - 1)), 1)
    events = []
    deadline = end_of_speech + (clip.cut_s - clip.speech_end_s) + EVENT_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            m = hub.wait(lambda m: m.topic == topic, max(0.05, deadline - time.monotonic()))
        except TimeoutError:
            break
        events.append(m)
        deadline = min(deadline, time.monotonic() + 1.0)  # then only look for stray extra events
    r.events = len(events)
    if not events:
        return r
    ev, received = json.loads(events[0].payload), events[0].timestamp  # paho stamps time.monotonic() on receipt
    r.speaker = ev.get("speaker")
    r.total_ms = round(1000 * (received - end_of_speech), 1)
    r.decide_ms = round(float(ev["elapsed_ms"]), 1) if ev.get("elapsed_ms") is not None else None
    with open(log_path, "rb") as f:
        f.seek(log_from)
        lines = log_events(f.read().decode(errors="replace"), wall_to_mono)
    cuts = [t for t, msg in lines if msg.startswith("utterance:") and t <= received + 0.002]
    decided = [DECISION.search(msg) for _, msg in lines]
    decided = [m for m in decided if m]
    if cuts:
        cut = cuts[-1]
        r.capture_ms = round(1000 * (cut - end_of_speech) - r.vad_wait_ms, 1)
        if decided and r.decide_ms is not None:
            r.utterance_s, r.queued_ms = float(decided[0].group(1)), float(decided[0].group(2))
            r.deliver_ms = round(1000 * (received - cut) - r.queued_ms - r.decide_ms, 1)
    return r


def summarise(results: list[ClipResult]) -> dict[str, Any]:
    """Median and max of each part over the clips that got an event."""
    got = [r for r in results if r.total_ms is not None]
    out: dict[str, Any] = {"clips": len(results), "events": len(got)}
    for key in ("total_ms", "vad_wait_ms", "capture_ms", "queued_ms", "decide_ms", "deliver_ms", "paplay_lag_ms"):
        vals = [getattr(r, key) for r in got if getattr(r, key) is not None]
        if vals:
            out[key] = {"median": round(statistics.median(vals), 1), "max": round(max(vals), 1)}
    return out


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=6, help="recordings to play (default 6)")
    ap.add_argument("--min-s", type=float, default=2.0, help="shortest recording, seconds")
    ap.add_argument("--max-s", type=float, default=7.5, help="longest recording, seconds (cut at 8 s)")
    ap.add_argument("--ref-latency-ms", type=int, default=5, help="reference recorder's PulseAudio latency")
    ap.add_argument("--json", action="store_true", help="print one JSON document")
    args = ap.parse_args(argv)
    import virtual_mic
    from broker import MOSQUITTO

    from edgeverify.core.model_store import resolve_model

    reason = virtual_mic.available() or (None if MOSQUITTO else "mosquitto not installed")
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    clips = pick_clips(args.clips, args.min_s, args.max_s)
    with tempfile.TemporaryDirectory(prefix="edgeverify-miclat-") as tmp:
        report = measure(clips, Path(tmp), resolve_model("int8"), ref_latency_ms=args.ref_latency_ms)
    if args.json:
        print(json.dumps(report, indent=1))
        return 0 if report["summary"]["events"] == len(clips) else 1
    cols = ("duration_s", "speech_end_s", "utterance_s", "total_ms", "vad_wait_ms", "capture_ms", "queued_ms",
            "decide_ms", "deliver_ms", "paplay_lag_ms", "events")
    print(f"{'file':<16}" + "".join(f"{c:>{len(c) + 2}}" for c in cols))
    for c in report["clips"]:
        print(f"{c['file']:<16}" + "".join(f"{'-' if c[k] is None else c[k]:>{len(k) + 2}}" for k in cols))
    s = report["summary"]
    print(f"\n{s['events']}/{s['clips']} events; end of speech -> MQTT event: median {s['total_ms']['median']:.0f} ms, "
          f"max {s['total_ms']['max']:.0f} ms" if "total_ms" in s else f"\n{s['events']}/{s['clips']} events")
    for key in ("vad_wait_ms", "capture_ms", "queued_ms", "decide_ms", "deliver_ms"):
        if key in s:
            print(f"  {key[:-3]:<9} median {s[key]['median']:7.1f} ms   max {s[key]['max']:7.1f} ms")
    print(f"CPU: {report['cpu']} ({report['cores']} cores), load average before/after "
          f"{report['loadavg_before'][0]:.2f}/{report['loadavg_after'][0]:.2f}")
    print(f"reference recorder latency {report['ref_latency_ms']} ms; null sink render quantum "
          f"{report['sink'].get('configured_ms')} ms")
    return 0 if s["events"] == len(clips) else 1


if __name__ == "__main__":
    sys.exit(main())
