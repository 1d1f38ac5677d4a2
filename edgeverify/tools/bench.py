"""Speed and memory figures for every built model (CAM++ and ECAPA, int8 and fp32): per-clip latency,
real-time factor, load time, peak RSS, model size, and each model's same-run floor (its MACs at the rate of
one big int8 conv timed here), so that figures from different CPUs compare as ratios. Goals are checked on
the default model in the same run."""

from __future__ import annotations

import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..core.audio import TARGET_RATE
from ..core import model_store
from ..core.embedder import Embedder, resolve_threads
from ..errors import ModelError

FLOOR_FRAMES = 300  # a 3 s clip's frame count (10 ms hop), where the floor conv and the models' MACs are counted
SPEECHBRAIN_SCRIPT = Path(__file__).resolve().parents[2] / "tests" / "bench_speechbrain.py"
ARCHITECTURES = ("campp", "ecapa")
PRECISIONS = ("int8", "fp32")
DEFAULT_MODELS = tuple(f"{arch}-{precision}" for arch in ARCHITECTURES for precision in PRECISIONS)

# Goals, same run, 3 s clip, 1 thread unless said (issue "CAM++ as the default model")
GOAL_OVER_SPEECHBRAIN = 8.0  # the default model's speed over SpeechBrain's torch ECAPA pipeline
GOAL_OVER_ECAPA_INT8 = 1.5  # the default model's speed over our ECAPA int8
GOAL_VERIFY_10S_MB = 120.0  # peak RSS of `verify` on two 10 s clips
GOAL_DAEMON_BUSY_MB = 130.0  # peak RSS of a daemon-shaped process serving a 10 s request


def default_architecture() -> str:
    """The model `model:` runs when not set (core.model_store.DEFAULT_MODEL; ECAPA where an older store
    does not say, as it was the only model)."""
    return str(getattr(model_store, "DEFAULT_MODEL", "ecapa"))


DEFAULT_PRECISION = str(getattr(model_store, "DEFAULT_PRECISION", "int8"))


@dataclass(frozen=True)
class ModelSpec:
    """One model to time: architecture + precision (or a file given by path), and where it is, if built."""

    name: str  # "campp-int8", or the path given
    arch: str  # "campp", "ecapa", or "file"
    precision: str  # "int8", "fp32", or "" for a file
    path: Optional[Path]
    missing: str = ""  # why path is None

    @property
    def is_default(self) -> bool:
        return self.arch == default_architecture() and self.precision == DEFAULT_PRECISION


def find_model(name: str) -> ModelSpec:
    """"campp-int8" / "ecapa-fp32" (the built files of those names in core.model_store's model folders),
    "int8"/"fp32" (the default model in that precision, as everywhere in the CLI), or a path to an .onnx file."""
    if name in PRECISIONS:
        name = f"{default_architecture()}-{name}"
    arch, _, precision = name.partition("-")
    if arch in ARCHITECTURES and precision in PRECISIONS:
        file_name = f"{name}.onnx"
        for directory in model_store.model_dirs():
            if (directory / file_name).is_file():
                return ModelSpec(name, arch, precision, directory / file_name)
        where = ", ".join(str(d) for d in model_store.model_dirs())
        return ModelSpec(name, arch, precision, None, f"not built: no {file_name} in {where} (edgeverify model build)")
    path = Path(name)
    if path.suffix == ".onnx":
        return ModelSpec(name, "file", "", path if path.is_file() else None, "" if path.is_file() else f"no such file {path}")
    raise ModelError(f"unknown model {name!r}: use {', '.join(DEFAULT_MODELS)} or a path to an .onnx file")


@dataclass
class BenchRow:
    model: str  # architecture: campp / ecapa / file
    precision: str
    default: bool
    name: str
    clip_s: float
    threads: int
    median_ms: float
    p90_ms: float
    rtf: float
    runs: int
    cpu_median_ms: Optional[float]  # this thread's CPU time: steady under load, meaningful for 1 thread only
    ms_per_audio_s: float


def _test_signal(seconds: float) -> np.ndarray:
    """Speech-like input: features and network cost do not depend on content, only on length."""
    rng = np.random.default_rng(7)
    n = int(seconds * TARGET_RATE)
    t = np.arange(n) / TARGET_RATE
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3.0 * t)
    return (0.1 * envelope * rng.standard_normal(n)).astype(np.float32)


def time_embedder(embedder: Embedder, seconds: float, runs: int) -> Tuple[List[float], List[float]]:
    """Wall and CPU milliseconds per embed (features included). CPU time of this thread is the steadier
    figure on a busy machine when onnxruntime runs on one thread."""
    samples = _test_signal(seconds)
    embedder.embed(samples)  # warm-up
    wall, cpu = [], []
    for _ in range(runs):
        started, cpu_started = time.perf_counter(), time.thread_time()
        embedder.embed(samples)
        wall.append(1000.0 * (time.perf_counter() - started))
        cpu.append(1000.0 * (time.thread_time() - cpu_started))
    return wall, cpu


def features_cpu_ms(embedder: Embedder, seconds: float, runs: int) -> Optional[float]:
    """CPU milliseconds of the model's own front end alone (part of every embed), median of ``runs``."""
    features = getattr(embedder, "features", None)  # the model's front end, where the embedder exposes it
    if features is None:
        return None
    samples = _test_signal(seconds)
    features(samples)
    cpu = []
    for _ in range(runs):
        started = time.thread_time()
        features(samples)
        cpu.append(1000.0 * (time.thread_time() - started))
    return round(statistics.median(cpu), 3)


def load_time_ms(path: Path, threads: int = 1, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        Embedder(path, threads)
        times.append(1000.0 * (time.perf_counter() - started))
    return statistics.median(times)


_PEAK_RSS = "int([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]) / 1024"


def verify_peak_rss_mb(model: str, seconds: float = 3.0, score: Optional[str] = None) -> Optional[float]:
    """Peak RSS (VmHWM) of a real `edgeverify verify --model MODEL` run on two clips of ``seconds`` (MODEL: a
    name the CLI knows or a path to the .onnx). Read in the child:
    ru_maxrss of a child keeps the forking parent's peak across exec, so it would report this bench's own size."""
    import soundfile as sf

    with tempfile.TemporaryDirectory() as tmp:
        clips = []
        for i in range(2):
            path = Path(tmp) / f"clip{i}.wav"
            sf.write(path, _test_signal(seconds) * (1 + i), TARGET_RATE, subtype="PCM_16")
            clips.append(str(path))
        script = (
            "import sys\nfrom edgeverify.__main__ import main\n"
            f"code = main(sys.argv[1:])\nprint('PEAK', {_PEAK_RSS}, file=sys.stderr)\nsys.exit(code)\n"
        )
        cmd = [sys.executable, "-c", script, "verify", *clips, "--model", model, "--vad", "off", "--json",
               *(["--score", score] if score else [])]
        done = subprocess.run(cmd, capture_output=True, text=True)
        peaks = [line.split()[1] for line in done.stderr.splitlines() if line.startswith("PEAK ")]
        return float(peaks[-1]) if done.returncode == 0 and peaks else None


def service_rss_mb(model: str, seconds: float = 10.0, score: str = "calibrated") -> Optional[Dict[str, float]]:
    """RSS of a process shaped like the daemon: its imports (MQTT client included) and the verifier loaded
    (idle), then one request of ``seconds`` read from a WAV file (busy peak, and RSS after it). No broker."""
    import soundfile as sf

    script = (
        "import json, sys\n"
        "import edgeverify.daemon, edgeverify.mqtt.service\n"
        "from edgeverify.core.audio import read_audio\n"
        "from edgeverify.core.verifier import Verifier\n"
        "def rss():\n"
        "    return int([l for l in open('/proc/self/status') if l.startswith('VmRSS')][0].split()[1]) / 1024\n"
        "v = Verifier.load(sys.argv[1], score_mode=sys.argv[3]); v.warm_up(); idle = rss()\n"
        "v.embed(read_audio(sys.argv[2]))\n"
        f"print(json.dumps({{'idle_mb': round(idle, 1), 'busy_peak_mb': round({_PEAK_RSS}, 1),"
        " 'after_request_mb': round(rss(), 1)}))\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "clip.wav"
        sf.write(clip, _test_signal(seconds), TARGET_RATE, subtype="PCM_16")
        done = subprocess.run([sys.executable, "-c", script, model, str(clip), score], capture_output=True, text=True)
    if done.returncode != 0:
        return None
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "request_s": seconds}


def cpu_int8_features() -> Dict[str, object]:
    """Which int8 kernel family onnxruntime can pick here: VNNI / AVX-512 / AVX2 (16-bit vpmaddubsw path,
    like a CPU with no dot product) on x86, SDOT (asimddp) / I8MM on ARM."""
    flags: set = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith(("flags", "features")):
                    flags.update(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm", "asimd")
    found = {name: name in flags for name in wanted if name in flags or not name.startswith(("asimd", "i8mm"))}
    if found.get("avx512_vnni") or found.get("avx_vnni"):
        path = "x86 VNNI (u8 x s8 dot product)"
    elif found.get("avx2"):
        path = "x86 AVX2 without VNNI (16-bit vpmaddubsw)"
    elif "asimddp" in flags:
        path = "ARM dot product (SDOT/UDOT)"
    elif "asimd" in flags:
        path = "ARM NEON without dot product"
    else:
        path = "unknown"
    return {"flags": found, "int8_path": path, "cpu": _cpu_name(), "cores": os.cpu_count()}


def count_macs(model_path: Path, frames: int = FLOOR_FRAMES) -> int:
    """Multiply-accumulates of one forward pass at ``frames`` frames, counted from the ONNX graph's Conv and
    MatMul shapes: by shape inference with the input's length fixed, or, where that cannot resolve a shape
    (sizes computed from the input at run time, QDQ weights), from one real run with those tensors exposed."""
    import onnx
    from onnx import shape_inference

    model = onnx.load(str(model_path))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[0].dim_value, dims[1].dim_value = 1, frames
    inferred = shape_inference.infer_shapes(model, data_prop=True).graph
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in (*inferred.value_info, *inferred.output)}
    shapes.update({i.name: list(i.dims) for i in model.graph.initializer})
    shapes[model.graph.input[0].name] = [1, frames, dims[2].dim_value]
    counted = [n for n in model.graph.node if n.op_type in ("Conv", "MatMul")]
    needed = {name for n in counted for name in (n.input[0], n.input[1], n.output[0])}
    if any(not shapes.get(name) or 0 in shapes[name] for name in needed):
        shapes.update(_run_shapes(model, needed, frames, dims[2].dim_value))
    total = 0
    for node in counted:
        out = shapes[node.output[0]]
        if node.op_type == "Conv":
            total += int(np.prod(out)) * int(np.prod(shapes[node.input[1]][1:]))
        else:
            total += int(np.prod(out)) * int(shapes[node.input[0]][-1])
    return total


def _run_shapes(model, names: set, frames: int, feat_dim: int) -> Dict[str, List[int]]:
    """Shapes of ``names`` from one onnxruntime run of ``model`` (no graph optimisation, so every node stays)
    on a (1, frames, feat_dim) input."""
    import onnx
    import onnxruntime as ort

    graph_names = {i.name for i in model.graph.initializer} | {i.name for i in model.graph.input} | {o.name for o in model.graph.output}
    exposed = sorted(names - graph_names)
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(onnx.ValueInfoProto(name=name) for name in exposed)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    features = np.random.default_rng(0).standard_normal((1, frames, feat_dim)).astype(np.float32)
    results = session.run(None, {model.graph.input[0].name: features})
    outputs = [o.name for o in session.get_outputs()]
    return {name: list(np.shape(value)) for name, value in zip(outputs, results)}


def int8_floor(runs: int = 15, frames: int = FLOOR_FRAMES, channels: int = 1024, kernel: int = 3) -> Dict[str, float]:
    """Rate of one int8 conv like ECAPA's big ones (channels -> channels, k=3, static QDQ, u8 activations, s8
    per-channel 7-bit weights: our quantiser's settings) on this CPU, one thread, timed now."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from ..core.embedder import make_session

    rng = np.random.default_rng(3)
    weight = (rng.standard_normal((channels, channels, kernel)) / np.sqrt(channels * kernel)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[kernel])],
        "floor",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, frames + kernel - 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(weight, "w"), numpy_helper.from_array(np.zeros(channels, np.float32), "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    inputs = [np.abs(rng.standard_normal((1, channels, frames + kernel - 1))).astype(np.float32) for _ in range(2)]

    class Reader:
        def __init__(self) -> None:
            self.items = iter(inputs)

        def get_next(self) -> Optional[dict]:
            item = next(self.items, None)
            return None if item is None else {"x": item}

    with tempfile.TemporaryDirectory() as tmp:
        fp32, int8 = Path(tmp) / "floor.onnx", Path(tmp) / "floor-int8.onnx"
        onnx.save(model, str(fp32))
        logging.disable(logging.WARNING)  # the quantiser's advice to pre-process a one-node graph
        quantize_static(
            str(fp32), str(int8), Reader(), quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
            extra_options={"WeightSymmetric": True},
        )
        logging.disable(logging.NOTSET)
        session = make_session(int8)
    session.run(None, {"x": inputs[0]})
    cpu = []
    for _ in range(runs):
        started = time.thread_time()
        session.run(None, {"x": inputs[0]})
        cpu.append(1000.0 * (time.thread_time() - started))
    ms = statistics.median(cpu)
    macs = channels * channels * kernel * frames
    return {"conv": f"{channels}->{channels} k={kernel} over {frames} frames, int8 QDQ per-channel", "conv_cpu_ms": round(ms, 3),
            "gmac_per_s": round(macs / ms / 1e6, 1)}


def speechbrain_bench(python: str, checkpoint: Path, clips: Sequence[float], runs: int) -> Dict:
    """SpeechBrain's torch pipeline timed by tests/bench_speechbrain.py in ``python`` (a separate venv with
    torch + speechbrain; never a dependency of edgeverify). One thread."""
    cmd = [python, str(SPEECHBRAIN_SCRIPT), str(checkpoint), "--clips", ",".join(str(c) for c in clips),
           "--threads", "1", "--runs", str(runs)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _one(rows: List[BenchRow], name: str, seconds: float, threads: int = 1) -> Optional[BenchRow]:
    return next((r for r in rows if r.name == name and r.clip_s == seconds and r.threads == threads), None)


def _goal(value: Optional[float], limit: float, at_least: bool, what: str) -> Dict[str, object]:
    met = None if value is None else (value >= limit if at_least else value <= limit)
    return {"what": what, "value": value, "goal": (">= " if at_least else "<= ") + f"{limit:g}", "met": met}


def run_bench(
    models: Sequence[str] = DEFAULT_MODELS,
    clips: Sequence[float] = (3.0, 10.0),
    threads: Sequence[int] = (1, 2, 4),
    runs: int = 15,
    measure_rss: bool = True,
    speechbrain_python: Optional[str] = None,
    checkpoint: Optional[Path] = None,
) -> Dict:
    """Time every built model of ``models`` (a model that is not built is listed under "skipped" with why),
    then the same run's int8 floor, each model's floor and the goals on the default model."""
    load_before = os.getloadavg()  # others' work on the machine moves wall times (CPU times much less)
    specs = [find_model(m) for m in models]
    skipped = [{"name": s.name, "reason": s.missing} for s in specs if s.path is None]
    specs = [s for s in specs if s.path is not None]
    rows: List[BenchRow] = []
    per_model: Dict[str, Dict] = {}
    for spec in specs:
        path = spec.path
        per_model[spec.name] = {
            "model": spec.arch,
            "precision": spec.precision,
            "default": spec.is_default,
            "path": str(path),
            "file_mb": round(path.stat().st_size / 1e6, 2),
            "load_ms": round(load_time_ms(path), 1),
        }
        for n_threads in threads:
            embedder = Embedder(path, n_threads)
            if "features_cpu_ms_3s" not in per_model[spec.name]:
                per_model[spec.name]["features_cpu_ms_3s"] = features_cpu_ms(embedder, 3.0, runs)
            for seconds in clips:
                wall, cpu = time_embedder(embedder, seconds, runs if seconds <= 3 else max(5, runs // 3))
                median = statistics.median(wall)
                rows.append(BenchRow(
                    model=spec.arch,
                    precision=spec.precision,
                    default=spec.is_default,
                    name=spec.name,
                    clip_s=seconds,
                    threads=n_threads,
                    median_ms=round(median, 2),
                    p90_ms=round(float(np.percentile(wall, 90)), 2),
                    rtf=round(median / 1000.0 / seconds, 5),
                    runs=len(wall),
                    cpu_median_ms=round(statistics.median(cpu), 2) if n_threads == 1 else None,
                    ms_per_audio_s=round(median / seconds, 2),
                ))
            del embedder
        if measure_rss:
            parse = getattr(model_store, "parse_model", None)  # the CLI's own names where it has them
            cli_name = spec.name if parse is not None and spec.arch in ARCHITECTURES and parse(spec.name) else str(path)
            # calibrated scoring, as users run it; cosine where this model has no cohort built yet (said so)
            score = "calibrated" if verify_peak_rss_mb(cli_name, 3.0) is not None else "cosine"
            per_model[spec.name]["rss_scoring"] = score
            for seconds, key in ((3.0, "verify_peak_rss_mb"), (10.0, "verify_peak_rss_mb_10s")):
                rss = verify_peak_rss_mb(cli_name, seconds, score)
                per_model[spec.name][key] = round(rss, 1) if rss is not None else None
            per_model[spec.name]["service_rss"] = service_rss_mb(str(path), 10.0, score)
            per_model[spec.name]["service_rss_20s"] = service_rss_mb(str(path), 20.0, score)  # the longest speech embedded
    result: Dict = {
        "rows": [asdict(r) for r in rows],
        "models": per_model,
        "skipped": skipped,
        "default_model": f"{default_architecture()}-{DEFAULT_PRECISION}",
        "bench_process_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
        "cpu": _cpu_name(),
        "cpu_int8": cpu_int8_features(),
        "threads_auto": resolve_threads("auto"),  # what `threads: auto` (the default) runs with here
    }
    result["floor"] = floor = int8_floor(runs)
    ratios: Dict[str, float] = {}
    macs_by_arch: Dict[str, int] = {}
    for spec in specs:  # MACs from the fp32 graph where built (plain shapes), else from the model itself
        if spec.arch not in macs_by_arch:
            fp32 = find_model(f"{spec.arch}-fp32") if spec.arch in ARCHITECTURES else spec
            macs_by_arch[spec.arch] = count_macs(fp32.path if fp32.path is not None else spec.path)
        macs = macs_by_arch[spec.arch]
        info = per_model[spec.name]
        info["gmac_3s"] = round(macs / 1e9, 3)
        info["floor_ms_3s"] = round(macs / floor["gmac_per_s"] / 1e6, 2)
        row = _one(rows, spec.name, 3.0)
        if row is not None and row.cpu_median_ms:
            ratios[f"{spec.name}_over_floor_3s"] = round(row.cpu_median_ms / info["floor_ms_3s"], 2)
            ten = _one(rows, spec.name, 10.0)
            if ten is not None and ten.cpu_median_ms:
                ratios[f"{spec.name}_10s_over_3s"] = round(ten.cpu_median_ms / row.cpu_median_ms, 2)
    for arch in ARCHITECTURES:
        for seconds in clips:
            fp32, int8 = _one(rows, f"{arch}-fp32", seconds), _one(rows, f"{arch}-int8", seconds)
            if fp32 is not None and int8 is not None:
                ratios[f"{arch}_fp32_over_int8_{seconds:g}s"] = round(fp32.cpu_median_ms / int8.cpu_median_ms, 2)
    if speechbrain_python:
        from ..build.model_build import CHECKPOINT_NAME

        ecapa_fp32 = find_model("ecapa-fp32").path
        built = find_model("ecapa-int8").path or ecapa_fp32
        ckpt = Path(checkpoint) if checkpoint else (built.parent if built else model_store.REPO_MODELS) / ".cache" / CHECKPOINT_NAME
        sb = speechbrain_bench(speechbrain_python, ckpt, clips, runs)
        result["speechbrain"] = sb
        for row in sb.get("rows", []):
            for spec in specs:
                ours = _one(rows, spec.name, row["clip_s"])
                if ours is not None and spec.precision == "int8":
                    ratios[f"speechbrain_over_{spec.name}_{row['clip_s']:g}s"] = round(row["cpu_median_ms"] / ours.cpu_median_ms, 2)
        if sb.get("embedding_first_clip") and ecapa_fp32 is not None:
            theirs = np.asarray(sb["embedding_first_clip"], dtype=np.float32)
            mine = Embedder(ecapa_fp32).embed(_test_signal(clips[0]))
            result["speechbrain"]["cosine_to_our_fp32"] = round(float(mine @ theirs / np.linalg.norm(theirs)), 6)
        result["speechbrain"].pop("embedding_first_clip", None)
    result["ratios"] = ratios
    result["goals"] = goals(result, rows)
    result["loadavg_1min"] = {"start": round(load_before[0], 2), "end": round(os.getloadavg()[0], 2), "cpus": os.cpu_count()}
    return result


def goals(result: Dict, rows: List[BenchRow]) -> Dict[str, Dict[str, Dict[str, object]]]:
    """Each int8 model of this run (the default and the candidates for it) against the goals of the default
    model, from this run's figures (value None: not measured in this run). Keyed by model name."""
    out: Dict[str, Dict[str, Dict[str, object]]] = {}
    names = [n for n in result["models"] if n.endswith("-int8")] or [result["default_model"]]
    if result["default_model"] not in names and result["default_model"] in result["models"]:
        names.insert(0, result["default_model"])
    for name in names:
        out[name] = _goals_of(name, result, rows)
    return out


def _goals_of(name: str, result: Dict, rows: List[BenchRow]) -> Dict[str, object]:
    info = result["models"].get(name, {})
    one_3s = _one(rows, name, 3.0)
    ecapa_3s = _one(rows, "ecapa-int8", 3.0)
    two = _one(rows, name, 3.0, threads=2)
    sb = next((r for r in result.get("speechbrain", {}).get("rows", []) if r["clip_s"] == 3.0 and r["threads"] == 1), None)
    cpu = one_3s.cpu_median_ms if one_3s is not None else None
    service = info.get("service_rss") or {}
    return {
        "default": name == result["default_model"],
        "over_speechbrain_3s": _goal(
            round(sb["cpu_median_ms"] / cpu, 2) if sb and cpu else None, GOAL_OVER_SPEECHBRAIN, True,
            f"SpeechBrain torch CPU ms / {name} CPU ms, 3 s clip, 1 thread"),
        "over_ecapa_int8_3s": _goal(
            round(ecapa_3s.cpu_median_ms / cpu, 2) if ecapa_3s is not None and cpu and name != "ecapa-int8" else None,
            GOAL_OVER_ECAPA_INT8, True, f"ecapa-int8 CPU ms / {name} CPU ms, 3 s clip, 1 thread"),
        "two_threads_3s": _goal(
            round(one_3s.median_ms / two.median_ms, 2) if one_3s is not None and two is not None else None,
            1.0, True, f"{name} wall ms at 1 thread / at 2 threads, 3 s clip (2 threads must pay; needs 2 idle cores)"),
        "verify_two_10s_peak_mb": _goal(info.get("verify_peak_rss_mb_10s"), GOAL_VERIFY_10S_MB, False,
                                        f"peak RSS of `verify` on two 10 s clips, {name}"),
        "daemon_busy_peak_mb": _goal(service.get("busy_peak_mb"), GOAL_DAEMON_BUSY_MB, False,
                                     f"peak RSS of a daemon-shaped process during a 10 s request, {name}"),
    }


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"
