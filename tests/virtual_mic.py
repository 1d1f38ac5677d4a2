"""A real capture path without a microphone: PortAudio -> ALSA pulse plugin -> PulseAudio null sink monitor.

`VirtualMic` starts a private PulseAudio daemon with a null sink "vmic"; whatever `play()` sends into
the sink (with paplay, i.e. real recordings) is what the ALSA "pulse" device records. PortAudio reads
ALSA_CONFIG_PATH when it initialises, so capture must run in a fresh process started with `env`;
`python tests/virtual_mic.py capture ...` is that process (see capture_main).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

SINK = "vmic"
ASOUND_CONF = "pcm.!default { type pulse }\nctl.!default { type pulse }\n"


def available() -> Optional[str]:
    """None if the virtual microphone can be built here, else the reason it cannot."""
    for tool in ("pulseaudio", "paplay", "pactl"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (apt-get install pulseaudio pulseaudio-utils)"
    if not any(Path(p).exists() for p in ("/usr/lib/x86_64-linux-gnu/alsa-lib/libasound_module_pcm_pulse.so",
                                          "/usr/lib/aarch64-linux-gnu/alsa-lib/libasound_module_pcm_pulse.so",
                                          "/usr/lib/arm-linux-gnueabihf/alsa-lib/libasound_module_pcm_pulse.so")):
        return "ALSA pulse plugin not installed (apt-get install libasound2-plugins)"
    return None


class VirtualMic:
    """Private PulseAudio daemon + null sink; always stop() it (or use as a context manager)."""

    def __init__(self, rate: int = 16000) -> None:
        self.rate = rate
        self.dir = Path(tempfile.mkdtemp(prefix="edgeverify-vmic-"))
        self.env = dict(os.environ)
        conf = self.dir / "asound.conf"
        conf.write_text(ASOUND_CONF)
        self.env.update(
            XDG_RUNTIME_DIR=str(self.dir),
            HOME=str(self.dir),  # pulseaudio keeps a cookie in ~/.config/pulse
            ALSA_CONFIG_PATH=f"/usr/share/alsa/alsa.conf:{conf}",
            PULSE_SOURCE=f"{SINK}.monitor",
            PULSE_SINK=SINK,
        )
        self.env.pop("PULSE_SERVER", None)
        self.pid: Optional[int] = None

    def start(self) -> "VirtualMic":
        cmd = [
            "pulseaudio", "-D", "--exit-idle-time=-1", "-n", "--disallow-exit", "--log-target=stderr",
            "--load=module-native-protocol-unix",
            f"--load=module-null-sink sink_name={SINK} rate={self.rate} channels=1",
        ]
        if os.geteuid() == 0:
            cmd.insert(1, "--system=false")
        res = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=30)
        if res.returncode != 0:
            self.stop()
            raise RuntimeError(f"pulseaudio failed to start: {res.stderr.strip()[-500:]}")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if subprocess.run(["pactl", "info"], env=self.env, capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        else:
            self.stop()
            raise RuntimeError("pulseaudio started but does not answer pactl")
        pidfile = self.dir / "pulse" / "pid"
        if pidfile.exists():
            self.pid = int(pidfile.read_text().split()[0])
        return self

    def play(self, path: os.PathLike | str) -> None:
        """Play a recording into the sink in real time (blocks until it has been played)."""
        subprocess.run(["paplay", f"--device={SINK}", str(path)], env=self.env, check=True, timeout=120)

    def stop(self) -> None:
        pidfile = self.dir / "pulse" / "pid"
        pid = self.pid
        if pid is None and pidfile.exists():
            try:
                pid = int(pidfile.read_text().split()[0])
            except ValueError:
                pid = None
        if pid is not None:
            try:
                os.kill(pid, signal.SIGTERM)
                for _ in range(50):
                    os.kill(pid, 0)
                    time.sleep(0.1)
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.pid = None
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "VirtualMic":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start_capture(
        self, out: Path, rates: list[int], device: str = "pulse", once_timeout: float = 0.0
    ) -> subprocess.Popen:
        """Fresh process capturing with MicrophoneListener; returns once it is listening."""
        repo = Path(__file__).resolve().parents[1]
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "capture", "--out", str(out), "--device", device,
             "--rates", ",".join(map(str, rates)), "--once-timeout", str(once_timeout)],
            env={**self.env, "PYTHONPATH": str(repo)}, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )
        line = proc.stdout.readline()
        if line.strip() != "READY":
            proc.kill()
            _, err = proc.communicate(timeout=10)
            raise RuntimeError(f"capture process failed to start: {line.strip()} {err.strip()[-2000:]}")
        return proc

    @staticmethod
    def finish_capture(proc: subprocess.Popen, timeout: float = 30.0) -> str:
        """Tell the capture process to stop (flushing), wait; returns its stderr."""
        try:
            _, err = proc.communicate("stop\n", timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
            raise RuntimeError(f"capture process did not stop within {timeout:g} s: {err.strip()[-2000:]}") from None
        if proc.returncode != 0:
            raise RuntimeError(f"capture process failed ({proc.returncode}): {err.strip()[-2000:]}")
        return err


def capture_main(argv: list[str]) -> int:
    """Child process: one MicrophoneListener per rate on the same device until 'stop' on stdin.

    Writes <out>/<rate>.npz (utterances u0, u1, ... at 16 kHz) and <out>/stats.json.
    """
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="pulse")
    ap.add_argument("--rates", default="16000")
    ap.add_argument("--once-timeout", type=float, default=0.0, help="also run capture_once() with this timeout")
    args = ap.parse_args(argv)
    import logging
    import threading

    import numpy as np

    from edgeverify.microphone.listener import MicrophoneListener, capture_once, list_input_devices

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    got: dict[int, list] = {}
    listeners = []
    for rate in (int(r) for r in args.rates.split(",")):
        got[rate] = []
        listeners.append(MicrophoneListener(args.device, rate, got[rate].append))
    for lst in listeners:
        lst.start()
    once: dict = {}

    def _once() -> None:  # a second, temporary stream on the same device: the "capture now" path
        try:
            once["samples"] = capture_once(args.device, 16000, timeout=args.once_timeout)
        except Exception as exc:  # reported to the test through stats.json
            once["error"] = repr(exc)

    worker = threading.Thread(target=_once) if args.once_timeout > 0 else None
    if worker is not None:
        worker.start()
    time.sleep(0.3)  # let the temporary stream open before the test starts playing
    print("READY", flush=True)
    sys.stdin.readline()
    if worker is not None:
        worker.join(args.once_timeout + 5)
    for lst in listeners:
        lst.stop(flush=True)
    out = Path(args.out)
    stats = {"devices": [d.name for d in list_input_devices()]}
    for lst in listeners:
        np.savez(out / f"{lst.sample_rate}.npz", **{f"u{i}": u for i, u in enumerate(got[lst.sample_rate])})
        stats[str(lst.sample_rate)] = {
            "device": lst.device_name, "blocks": lst.blocks, "overflows": lst.overflows,
            "input_overflows": lst.input_overflows, "utterances": lst.utterances,
        }
    if "samples" in once:
        np.save(out / "once.npy", once["samples"])
    stats["once_error"] = once.get("error")
    (out / "stats.json").write_text(json.dumps(stats))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "capture":
        sys.exit(capture_main(sys.argv[2:]))
    print("usage: virtual_mic.py capture --out DIR [--device pulse] [--rates 16000,8000]", file=sys.stderr)
    sys.exit(2)
