"""Does edgeverify give the same answers on the Raspberry Pi's CPU family as on x86?

Run by tests/arm/run_arm_check.sh with the x86 venv's Python (the driver). The driver computes x86
embeddings in-process and starts this same file as a worker under each emulated arm64 Python
(QEMU user mode: Cortex-A72 = Pi 4, no int8 dot product; Cortex-A76 = Pi 5, SDOT/UDOT). An arm Python
cannot exec arm subprocesses (no binfmt_misc), so every arm process is started by the driver through
the wrapper. Checks, per emulated CPU:

  a. every module of the package imports (daemon ones included), plus the native libraries they load
     (onnxruntime, libsndfile via soundfile, libportaudio via sounddevice, python-systemd);
  b. int8 embeddings of a fixed sample of dev-set clips (the very models/ecapa-int8.onnx built on x86)
     have cosine >= MIN_COSINE to the x86 ones, and every pair gets the same decision at the default
     threshold; fp32 on a few clips too;
  c. `python -m edgeverify verify A B --json` gives the x86 decision, score within SCORE_TOLERANCE;
  d. CAM++ (where built: models/campp-int8.onnx, campp-fp32.onnx): fp32 embeddings of a short clip have
     cosine >= MIN_COSINE to x86; int8 ones of two clips >= CAMPP_INT8_MIN_COSINE (see there why), A72 and
     A76 equal to MIN_COSINE, their score within CAMPP_INT8_SCORE_TOLERANCE of x86's (also the CLI's
     tolerance in c. when CAM++ int8 is the default); its numpy Kaldi fbank
     of the reference's clip equals x86's (FBANK_TOLERANCE) and the torch reference's features.

Exit status 0 when everything holds (or the speech data is missing: skipped, said loudly), 1 otherwise.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import itertools
import json
import os
import pkgutil
import platform
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[2]
MIN_COSINE = 0.9999
SCORE_TOLERANCE = 1e-4

# Short (2-3.6 s) dev clips: 5 speakers x 2, three corpora, both sexes, a child, German and English,
# two same-source female readers (the hardest non-target pairs). Paths relative to the dev set.
SAMPLE = (
    "ls-1998/1998-15444-0007.wav",
    "ls-1998/1998-15444-0008.wav",
    "ls-3331/3331-159605-0001.wav",
    "ls-3331/3331-159605-0006.wav",
    "ls-3005/3005-163389-0002.wav",
    "ls-3005/3005-163389-0004.wav",
    "so762-0001/000010011.wav",
    "so762-0001/000010133.wav",
    "emodb-08/08a02Na.wav",
    "emodb-08/08a04Nc.wav",
)
FP32_SAMPLE = 2  # the first N files of SAMPLE are also embedded with the fp32 model
# CLI pairs: (same speaker, different speakers of the same corpus and sex)
CLI_PAIRS = ((0, 1), (0, 2))
# CAM++: the clip whose features the torch reference ships and a short one of another speaker and corpus
# (emulation is slow: a 3 s clip takes ~20 s through CAM++ fp32 on the emulated A72)
CAMPP_SAMPLE = (8, 5)
CAMPP_FP32_SAMPLE = 1  # the first N of CAMPP_SAMPLE also through campp-fp32
CAMPP_FILES = {p: f"campp-{p}.onnx" for p in ("int8", "fp32")}
# CAM++ int8 requantises ~100 times in a row, so a different float summation order before one rounding flips
# it and the flip travels: on one x86 CPU, onnxruntime's graph fusion level alone moves the int8 embedding to
# cosine ~0.99990 (printed by the check). Across CPUs the bound is therefore 0.9995 (5x that; the int8
# quantisation itself costs ~0.9973 to fp32, a kernel that saturates or misreads weights far more); the two
# ARM cores, which run the same fused graph, must still agree to MIN_COSINE (no-dot-product vs SDOT kernels).
CAMPP_INT8_MIN_COSINE = 0.9995
# pair scores (cosine) move more than single embeddings: x86 alone, fusion level all vs basic, moved two dev
# pairs by 1.4e-3 and 2.0e-3; the emulated A72 moved them by 1.2e-3 and 2.8e-3 (`verify`, same decisions)
CAMPP_INT8_SCORE_TOLERANCE = 5e-3
CAMPP_REFERENCE = Path("models") / "campp-zh-en-common-advanced" / "reference" / "dev.npz"  # under ../shared
FBANK_TOLERANCE = 1e-5  # the same numpy code on two CPUs: float32 log and BLAS rounding differ (1.9e-6 seen)

# Native extensions the package loads lazily or optionally: they must load on arm64 too.
NATIVE_IMPORTS = ("onnxruntime", "numpy", "scipy.signal", "soundfile", "sounddevice", "yaml", "paho.mqtt.client", "systemd.daemon")
# Optional on x86 (the venv has the systemd extra only where libsystemd-dev was there to compile it);
# the arm side installs Debian's python3-systemd, so there it must load.
OPTIONAL_ON_X86 = ("systemd.daemon",)

AT_HWCAP = 16
HWCAP_ASIMDDP = 1 << 20  # SDOT/UDOT (Armv8.2 dot product)
AT_HWCAP2 = 26
HWCAP2_I8MM = 1 << 13


# --------------------------------------------------------------------------------------------- worker
def speech_dir() -> Path:
    default = REPO.parent / "shared" / "data" / "speech"
    return Path(os.environ.get("EDGEVERIFY_SPEECH_DIR", default))


def cpu_flags() -> Dict[str, object]:
    """What the (emulated) CPU advertises to onnxruntime: the auxiliary vector, not /proc/cpuinfo text."""
    info: Dict[str, object] = {"machine": platform.machine()}
    if platform.machine() == "aarch64":
        libc = ctypes.CDLL(None)
        libc.getauxval.restype = ctypes.c_ulong
        hwcap, hwcap2 = libc.getauxval(AT_HWCAP), libc.getauxval(AT_HWCAP2)
        info.update(dotprod=bool(hwcap & HWCAP_ASIMDDP), i8mm=bool(hwcap2 & HWCAP2_I8MM))
    else:
        flags = set()
        try:
            for line in open("/proc/cpuinfo", encoding="ascii", errors="replace"):
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
        except OSError:
            pass
        info.update(avx2="avx2" in flags, avx512_vnni="avx512_vnni" in flags, avx_vnni="avx_vnni" in flags,
                    amx_int8="amx_int8" in flags)
    return info


def import_everything(optional: Sequence[str] = ()) -> Dict[str, object]:
    """Import every module of the package (walk_packages) and the native libraries it loads lazily."""
    import edgeverify

    modules, failures = [], {}
    for info in pkgutil.walk_packages(edgeverify.__path__, "edgeverify.", onerror=lambda name: failures.setdefault(name, "walk failed")):
        try:
            importlib.import_module(info.name)
            modules.append(info.name)
        except Exception:  # report every failure, not just the first
            failures[info.name] = traceback.format_exc(limit=3)
    absent = []
    for name in NATIVE_IMPORTS:
        try:
            importlib.import_module(name)
            modules.append(name)
        except ModuleNotFoundError:
            if name in optional:
                absent.append(name)
            else:
                failures[name] = traceback.format_exc(limit=3)
        except Exception:
            failures[name] = traceback.format_exc(limit=3)
    return {"modules": modules, "failures": failures, "absent_optional": absent}


def embed_files(model: str, files: Sequence[Path]) -> Dict[str, object]:
    """Embeddings (as lists) and per-clip seconds with the same settings as `edgeverify verify`."""
    from edgeverify.core.audio import read_audio
    from edgeverify.core.verifier import Verifier

    started = time.perf_counter()
    verifier = Verifier.load(model, threads=1)  # VAD on, default threshold: as the CLI and the daemon
    load_s = time.perf_counter() - started
    rows = []
    for path in files:
        audio = read_audio(path)
        started = time.perf_counter()
        vector = verifier.embed(audio)
        rows.append({"file": str(path), "seconds": time.perf_counter() - started, "duration_s": audio.duration_s,
                     "embedding": [float(x) for x in vector]})
    return {"load_s": load_s, "threshold": verifier.threshold, "rows": rows}


def campp_models() -> Dict[str, Path]:
    """The checkout's built CAM++ files (the x86 build, as for ECAPA); empty when not built."""
    paths = {p: REPO / "models" / name for p, name in CAMPP_FILES.items()}
    return paths if all(path.is_file() for path in paths.values()) else {}


def embed_campp(files: Sequence[Path], fp32_count: int) -> Dict[str, object]:
    """CAM++ embeddings of whole clips (decoded as `verify` decodes them; the model's own front end), and
    the Kaldi fbank of the clip the torch reference ships features for."""
    import numpy as np

    from edgeverify.core.audio import read_audio
    from edgeverify.core.embedder import Embedder
    from edgeverify.core.fbank import kaldi_fbank

    out: Dict[str, object] = {}
    for precision, path in campp_models().items():
        started = time.perf_counter()
        embedder = Embedder(path, 1)
        load_s = time.perf_counter() - started
        rows = []
        for clip in files[: fp32_count if precision == "fp32" else len(files)]:
            samples = read_audio(clip).samples
            started = time.perf_counter()
            vector = embedder.embed(samples)
            rows.append({"file": str(clip), "seconds": time.perf_counter() - started,
                         "duration_s": samples.shape[0] / 16000, "embedding": [float(x) for x in vector]})
        out[precision] = {"load_s": load_s, "rows": rows}
        if precision == "int8" and platform.machine() != "aarch64":  # x86's own spread: another fusion level
            out["int8_basic_fusion"] = [_embed_basic_fusion(path, embedder, clip) for clip in files]
    ref_path = speech_dir().parent.parent / CAMPP_REFERENCE
    if ref_path.is_file():
        ref = np.load(ref_path)
        feats = kaldi_fbank(read_audio(speech_dir() / "dev" / str(ref["fbank_file"])).samples)
        out["fbank"] = {"file": str(ref["fbank_file"]), "values": feats.ravel().tolist(), "shape": list(feats.shape),
                        "max_diff_to_torch": float(np.abs(feats - ref["fbank"]).max()) if feats.shape == ref["fbank"].shape else None}
        names = [str(f) for f in ref["files"]]
        out["reference"] = {str(clip): ref["embeddings"][names.index(f"{clip.parent.name}/{clip.name}")].tolist()
                            for clip in files if f"{clip.parent.name}/{clip.name}" in names}
    return out


def _embed_basic_fusion(path: Path, embedder, clip: Path) -> List[float]:
    """The embedding of ``clip`` through the same int8 graph with onnxruntime's basic fusions only."""
    import numpy as np
    import onnxruntime as ort

    from edgeverify.core.audio import read_audio

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feats = embedder.features(read_audio(clip).samples)[None].astype(np.float32)
    vector = session.run(None, {session.get_inputs()[0].name: feats})[0][0]
    return [float(x) for x in vector / np.linalg.norm(vector)]


def worker(files: Sequence[Path], fp32_count: int, optional: Sequence[str] = (),
           campp_files: Sequence[Path] = ()) -> Dict[str, object]:
    import numpy
    import onnxruntime

    result: Dict[str, object] = {
        "cpu": cpu_flags(),
        "python": platform.python_version(),
        "versions": {"onnxruntime": onnxruntime.__version__, "numpy": numpy.__version__},
        "imports": import_everything(optional),
    }
    import scipy

    result["versions"]["scipy"] = scipy.__version__
    result["int8"] = embed_files("ecapa-int8" if _knows("ecapa-int8") else "int8", files)
    result["fp32"] = embed_files("ecapa-fp32" if _knows("ecapa-fp32") else "fp32", files[:fp32_count])
    if campp_files:
        result["campp"] = embed_campp(campp_files, CAMPP_FP32_SAMPLE)
    return result


def default_model() -> str:
    """"campp-int8" style name of the model the CLI runs by default (ECAPA int8 where the store does not say)."""
    from edgeverify.core import model_store

    return f"{getattr(model_store, 'DEFAULT_MODEL', 'ecapa')}-{getattr(model_store, 'DEFAULT_PRECISION', 'int8')}"


def _knows(name: str) -> bool:
    """Whether this edgeverify names its models by architecture (so that "int8" alone may mean CAM++)."""
    from edgeverify.core import model_store

    parse = getattr(model_store, "parse_model", None)
    return parse is not None and parse(name) is not None


# --------------------------------------------------------------------------------------------- driver
@dataclass
class Platform:
    label: str
    python: List[str]  # argv prefix that runs a Python on this platform
    result: Optional[Dict[str, object]] = None
    cli: List[Dict[str, object]] = field(default_factory=list)
    errors: List[str] = field(default_factory=list)
    wall_s: float = 0.0


def run_cli(plat: Platform, first: Path, second: Path, timeout: float) -> Dict[str, object]:
    env = dict(os.environ, EXTRA_PYTHONPATH=str(REPO), PYTHONPATH=str(REPO))
    cmd = plat.python + ["-m", "edgeverify", "verify", str(first), str(second), "--json"]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[-5:])} exited {proc.returncode}: {proc.stderr.strip()[-800:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["wall_s"] = seconds
    return out


def run_arm(plat: Platform, files: Sequence[Path], fp32_count: int, pairs: Sequence[Tuple[int, int]], timeout: float,
            campp_files: Sequence[Path] = ()) -> None:
    """Worker (imports + embeddings), then the CLI on each pair, all under the emulated CPU."""
    started = time.perf_counter()
    try:
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
            out_path = Path(handle.name)
        env = dict(os.environ, EXTRA_PYTHONPATH=str(REPO))
        cmd = plat.python + [str(Path(__file__).resolve()), "worker", "--out", str(out_path), "--fp32", str(fp32_count),
                             *(["--campp", ",".join(map(str, campp_files))] if campp_files else []), *map(str, files)]
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            plat.errors.append(f"worker exited {proc.returncode}: {proc.stderr.strip()[-1500:]}")
            return
        plat.result = json.loads(out_path.read_text())
        out_path.unlink()
        for i, j in pairs:
            plat.cli.append(run_cli(plat, files[i], files[j], timeout))
    except Exception as exc:  # timeouts and crashes are failures of this platform, reported in the table
        plat.errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        plat.wall_s = time.perf_counter() - started


def cos(a: Sequence[float], b: Sequence[float]) -> float:
    import numpy as np

    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


def max_abs(a: Sequence[float], b: Sequence[float]) -> float:
    import numpy as np

    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))


def report(x86: Platform, arms: List[Platform], files: Sequence[Path], pairs: Sequence[Tuple[int, int]]) -> List[str]:
    """Print the tables; return the list of failed checks."""
    failures: List[str] = []
    for plat in arms:
        failures += [f"{plat.label}: {e}" for e in plat.errors]
    ok = [p for p in arms if p.result is not None]

    print("\n== platforms")
    for plat in [x86, *arms]:
        if plat.result is None:
            print(f"  {plat.label:5} NO RESULT")
            continue
        r = plat.result
        imports = r["imports"]
        print(f"  {plat.label:5} cpu={r['cpu']} python={r['python']} {r['versions']} "
              f"imports={len(imports['modules'])} ok, {len(imports['failures'])} failed"
              + (f" (optional, absent: {', '.join(imports['absent_optional'])})" if imports.get("absent_optional") else "")
              + f"; wall {plat.wall_s:.0f} s")
        for name, why in imports["failures"].items():
            failures.append(f"{plat.label}: import {name} failed")
            print(f"        import {name} FAILED: {why.strip().splitlines()[-1]}")
    for plat in ok:
        cpu = plat.result["cpu"]
        want = plat.label == "A76"
        if cpu.get("dotprod") is not want:
            failures.append(f"{plat.label}: emulated CPU has dotprod={cpu.get('dotprod')}, expected {want}")

    base = x86.result["int8"]
    threshold = float(base["threshold"])
    print(f"\n== int8 embeddings, models/ecapa-int8.onnx (threshold {threshold}); cosine to x86, per-clip seconds")
    head = f"  {'file':32} {'dur_s':>5}" + "".join(f" {'cos ' + p.label:>10}" for p in ok)
    head += "".join(f" {'maxdiff ' + p.label:>12}" for p in ok)
    head += (f" {'cos A72~A76':>11}" if len(ok) == 2 else "") + f" {'x86 s':>6}" + "".join(f" {p.label + ' s':>7}" for p in ok)
    print(head)
    for k, row in enumerate(base["rows"]):
        name = "/".join(Path(row["file"]).parts[-2:])
        line = f"  {name:32} {row['duration_s']:5.2f}"
        cells = []
        for plat in ok:
            other = plat.result["int8"]["rows"][k]
            c = cos(row["embedding"], other["embedding"])
            cells.append(c)
            if c < MIN_COSINE:
                failures.append(f"{plat.label}: int8 {name} cosine {c:.6f} < {MIN_COSINE}")
        line += "".join(f" {c:10.7f}" for c in cells)
        line += "".join(f" {max_abs(row['embedding'], p.result['int8']['rows'][k]['embedding']):12.2e}" for p in ok)
        if len(ok) == 2:
            line += f" {cos(ok[0].result['int8']['rows'][k]['embedding'], ok[1].result['int8']['rows'][k]['embedding']):11.7f}"
        line += f" {row['seconds']:6.3f}" + "".join(f" {p.result['int8']['rows'][k]['seconds']:7.1f}" for p in ok)
        print(line)
    print("  model load s: x86 %.2f" % base["load_s"] + "".join(f", {p.label} {p.result['int8']['load_s']:.1f}" for p in ok))

    print(f"\n== decisions on all {len(files) * (len(files) - 1) // 2} pairs at threshold {threshold}")
    for plat in ok:
        agree, worst, margin = 0, 0.0, float("inf")
        total = 0
        for i, j in itertools.combinations(range(len(files)), 2):
            total += 1
            s_x = cos(base["rows"][i]["embedding"], base["rows"][j]["embedding"])
            s_a = cos(plat.result["int8"]["rows"][i]["embedding"], plat.result["int8"]["rows"][j]["embedding"])
            worst = max(worst, abs(s_x - s_a))
            margin = min(margin, abs(s_x - threshold))
            if (s_x >= threshold) == (s_a >= threshold):
                agree += 1
            else:
                failures.append(f"{plat.label}: decision differs on pair {i},{j} (x86 {s_x:.5f}, arm {s_a:.5f})")
        print(f"  {plat.label}: {agree}/{total} decisions agree; max |score diff| {worst:.2e}; "
              f"closest x86 score to the threshold: {margin:.4f} away")

    print("\n== fp32 embeddings, models/ecapa-fp32.onnx: cosine to x86")
    for k, row in enumerate(x86.result["fp32"]["rows"]):
        name = "/".join(Path(row["file"]).parts[-2:])
        cells = []
        for plat in ok:
            c = cos(row["embedding"], plat.result["fp32"]["rows"][k]["embedding"])
            other = plat.result["fp32"]["rows"][k]
            cells.append(f"{plat.label} {c:.7f} maxdiff {max_abs(row['embedding'], other['embedding']):.1e} ({other['seconds']:.1f} s)")
            if c < MIN_COSINE:
                failures.append(f"{plat.label}: fp32 {name} cosine {c:.6f} < {MIN_COSINE}")
        print(f"  {name:32} " + "  ".join(cells))
    # int8 vs fp32 on the same platform: how far quantisation moves the embedding (context for the above)
    for plat in [x86, *ok]:
        q = [cos(a["embedding"], b["embedding"]) for a, b in zip(plat.result["int8"]["rows"], plat.result["fp32"]["rows"])]
        print(f"  int8 vs fp32 on {plat.label}: " + ", ".join(f"{c:.5f}" for c in q))

    default = default_model()
    cli_tolerance = CAMPP_INT8_SCORE_TOLERANCE if default == "campp-int8" else SCORE_TOLERANCE
    print(f"\n== CLI: python -m edgeverify verify A B --json (default model {default}; score tolerance {cli_tolerance:g})")
    for n, (i, j) in enumerate(pairs):
        ref = x86.cli[n] if n < len(x86.cli) else None
        pair = f"{Path(files[i]).stem} vs {Path(files[j]).stem}"
        if ref is None:
            failures.append(f"x86: CLI on {pair} gave no result")
            continue
        line = f"  {pair:44} x86 {ref['same_speaker']!s:5} {ref['score']:.6f}"
        for plat in ok:
            if n >= len(plat.cli):
                line += f" | {plat.label} NO RESULT"
                failures.append(f"{plat.label}: CLI on {pair} gave no result")
                continue
            got = plat.cli[n]
            diff = abs(got["score"] - ref["score"])
            line += f" | {plat.label} {got['same_speaker']!s:5} {got['score']:.6f} (diff {diff:.1e}, {got['wall_s']:.0f} s)"
            if got["same_speaker"] != ref["same_speaker"] or diff > cli_tolerance:
                failures.append(f"{plat.label}: CLI on {pair}: {got['same_speaker']} {got['score']} vs x86 "
                                f"{ref['same_speaker']} {ref['score']}")
        print(line)
    return failures


def report_campp(x86: Platform, arms: List[Platform]) -> List[str]:
    """CAM++ tables: embeddings and pair scores against x86, the fbank on each CPU; returns failed checks."""
    import numpy as np

    failures: List[str] = []
    base = x86.result.get("campp") or {}
    for plat in arms:
        if "campp" not in plat.result:
            failures.append(f"{plat.label}: no CAM++ result")
    arms = [p for p in arms if "campp" in p.result]
    for precision in CAMPP_FILES:
        rows = base.get(precision, {}).get("rows", [])
        print(f"\n== CAM++ {precision} embeddings, models/{CAMPP_FILES[precision]}: cosine to x86"
              + (", to the torch reference" if base.get("reference") else "") + "; per-clip seconds")
        for k, row in enumerate(rows):
            name = "/".join(Path(row["file"]).parts[-2:])
            line = f"  {name:32} {row['duration_s']:5.2f} s"
            ref = base.get("reference", {}).get(row["file"])
            if ref is not None:
                line += f" | x86 to torch {cos(row['embedding'], ref):.6f}"
            bound = CAMPP_INT8_MIN_COSINE if precision == "int8" else MIN_COSINE
            if precision == "int8" and base.get("int8_basic_fusion"):
                line += f" | x86 other fusion {cos(row['embedding'], base['int8_basic_fusion'][k]):.7f}"
            for plat in arms:
                other = plat.result["campp"][precision]["rows"][k]
                c = cos(row["embedding"], other["embedding"])
                line += f" | {plat.label} {c:.7f} maxdiff {max_abs(row['embedding'], other['embedding']):.1e} ({other['seconds']:.1f} s)"
                if c < bound:
                    failures.append(f"{plat.label}: CAM++ {precision} {name} cosine {c:.6f} < {bound}")
            if len(arms) == 2:
                c = cos(arms[0].result["campp"][precision]["rows"][k]["embedding"], arms[1].result["campp"][precision]["rows"][k]["embedding"])
                line += f" | {arms[0].label}~{arms[1].label} {c:.7f}"
                if c < MIN_COSINE:
                    failures.append(f"CAM++ {precision} {name}: {arms[0].label} and {arms[1].label} differ (cosine {c:.6f})")
            print(line + f" | x86 {row['seconds']:.3f} s")
        if len(rows) > 1:
            for plat in arms:
                other = plat.result["campp"][precision]["rows"]
                worst = max(abs(cos(rows[i]["embedding"], rows[j]["embedding"]) - cos(other[i]["embedding"], other[j]["embedding"]))
                            for i, j in itertools.combinations(range(len(rows)), 2))
                print(f"  {plat.label}: max |pair score diff| to x86 {worst:.1e} over {len(rows) * (len(rows) - 1) // 2} pairs")
                if worst > (CAMPP_INT8_SCORE_TOLERANCE if precision == "int8" else SCORE_TOLERANCE):
                    failures.append(f"{plat.label}: CAM++ {precision} pair scores differ from x86 by {worst:.2e}")
        print("  model load s: x86 %.2f" % base[precision]["load_s"] + "".join(f", {p.label} {p.result['campp'][precision]['load_s']:.1f}" for p in arms))
    fb = base.get("fbank")
    if fb:
        x = np.asarray(fb["values"])
        print(f"\n== Kaldi fbank (core/fbank.py) of {fb['file']}: max |diff| to the torch reference's features: x86 {fb['max_diff_to_torch']:.1e}"
              + "".join(f", {p.label} {p.result['campp']['fbank']['max_diff_to_torch']:.1e}" for p in arms))
        for plat in [x86, *arms]:
            got = plat.result["campp"]["fbank"]["max_diff_to_torch"]
            if got is None or got > 1e-3:
                failures.append(f"{plat.label}: Kaldi fbank of {fb['file']} differs from the torch reference by {got}")
        for plat in arms:
            other = plat.result["campp"]["fbank"]
            diff = float(np.abs(x - np.asarray(other["values"])).max()) if other["shape"] == fb["shape"] else float("inf")
            print(f"  {plat.label} vs x86: max |diff| {diff:.1e}")
            if diff > FBANK_TOLERANCE:
                failures.append(f"{plat.label}: Kaldi fbank differs from x86 by {diff:.2e}")
    return failures


def driver(args: argparse.Namespace) -> int:
    dev = speech_dir() / "dev"
    files = [dev / name for name in SAMPLE]
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        print(f"arm check SKIPPED: dev-set clips missing (EDGEVERIFY_SPEECH_DIR={speech_dir()}): {missing[:3]}")
        return 0
    arms = []
    for spec in args.arm:
        label, _, wrapper = spec.partition("=")
        arms.append(Platform(label, [wrapper]))
    x86 = Platform("x86", [sys.executable])
    campp_files = [files[i] for i in CAMPP_SAMPLE] if campp_models() else []
    if args.require_campp and not campp_files:
        print(f"arm check FAILED: CAM++ required but {', '.join(CAMPP_FILES.values())} not built in {REPO / 'models'}")
        return 1
    if not campp_files:
        print("arm check: CAM++ not built here (models/campp-int8.onnx, campp-fp32.onnx): its checks are SKIPPED")

    started = time.perf_counter()
    threads = [threading.Thread(target=run_arm, args=(p, files, args.fp32, CLI_PAIRS, args.timeout, campp_files)) for p in arms]
    if args.jobs > 1:
        for t in threads:
            t.start()
    x86_started = time.perf_counter()
    try:
        x86.result = worker(files, args.fp32, OPTIONAL_ON_X86, campp_files)
        x86.cli = [run_cli(x86, files[i], files[j], args.timeout) for i, j in CLI_PAIRS]
    except Exception:  # still wait for the arm threads, then fail: x86 is the reference
        x86.errors.append(traceback.format_exc())
    x86.wall_s = time.perf_counter() - x86_started
    for t in threads:
        if args.jobs <= 1:
            t.start()
            t.join()
        else:
            t.join()
    if x86.errors:
        print("arm check FAILED: the x86 reference run failed:\n" + x86.errors[0])
        return 1
    failures = report(x86, arms, files, CLI_PAIRS)
    if campp_files:
        failures += report_campp(x86, [p for p in arms if p.result is not None])
    print(f"\narm check: {len(files)} clips, {len(arms)} emulated CPUs, {time.perf_counter() - started:.0f} s wall")
    if failures:
        print(f"arm check FAILED ({len(failures)}):")
        for failure in failures:
            print(f"  - {failure}")
        return 1
    print("arm check PASSED")
    return 0


def print_resolved(reports: Sequence[Path]) -> int:
    """One line per pip --report: the aarch64 wheels pip chose for that Python (proof no x86-only tag slipped in)."""
    for path in sorted(reports):
        report = json.loads(Path(path).read_text())
        python = Path(path).stem.rpartition("-")[2]  # resolve-3.11.json (pip reports the host's version)
        wheels = sorted(item["download_info"]["url"].rsplit("/", 1)[-1] for item in report["install"])
        bad = [w for w in wheels if not (w.endswith("-any.whl") or "aarch64" in w)]
        names = " ".join("-".join(w.split("-")[:2]) for w in wheels)
        print(f"  python {python} aarch64: {len(wheels)} wheels: {names}")
        if bad:
            print(f"  python {python}: NOT aarch64 wheels: {bad}")
            return 1
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    drive = sub.add_parser("drive", help="run on x86: compare x86 with each emulated arm CPU")
    drive.add_argument("--arm", action="append", default=[], help="LABEL=WRAPPER, e.g. A72=.cache/arm-python/python-cortex-a72")
    drive.add_argument("--fp32", type=int, default=FP32_SAMPLE, help="how many clips also go through the fp32 model")
    drive.add_argument("--jobs", type=int, default=2, help="emulated CPUs run at the same time (1 = one after the other)")
    drive.add_argument("--timeout", type=float, default=1800.0,
                       help="seconds allowed to each arm process (a loaded 2-core machine took over 900 for the A72)")
    drive.add_argument("--require-campp", action="store_true", help="fail when the CAM++ models are not built")
    work = sub.add_parser("worker", help="run under an arm Python: imports and embeddings, written as JSON")
    work.add_argument("--out", required=True, help="JSON file to write")
    work.add_argument("--fp32", type=int, default=FP32_SAMPLE, help="how many of the files also go through fp32")
    work.add_argument("--campp", default="", help="comma-separated clips to embed with CAM++ too (int8; fp32 the first)")
    work.add_argument("files", nargs="+", help="clips to embed")
    resolved = sub.add_parser("resolved", help="summarise pip --report files of an aarch64 resolution")
    resolved.add_argument("reports", nargs="+", type=Path, help="pip install --report JSON files")
    args = parser.parse_args(argv)
    if args.mode == "resolved":
        return print_resolved(args.reports)
    if args.mode == "worker":
        result = worker([Path(f) for f in args.files], args.fp32, campp_files=[Path(f) for f in args.campp.split(",") if f])
        Path(args.out).write_text(json.dumps(result))
        return 0
    if not args.arm:
        parser.error("give at least one --arm LABEL=WRAPPER")
    return driver(args)


if __name__ == "__main__":
    if str(REPO) not in sys.path:  # the checkout's package, on x86 and under the arm wrappers alike
        sys.path.insert(0, str(REPO))
    sys.exit(main())
