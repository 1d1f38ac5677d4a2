"""The stable CLI (verify, eval, bench, model info) as a user runs it: real processes, real recordings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeverify.core.model_store import DEFAULT_MODEL

REPO = Path(__file__).resolve().parents[1]
SAME = ("vctk-p226/p226_003.wav", "vctk-p226/p226_008.wav")
DIFFERENT = ("vctk-p226/p226_003.wav", "ls-1688/1688-142285-0008.wav")


def edgeverify(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edgeverify", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def _pair(speech_dir: Path, pair: tuple) -> list:
    paths = [speech_dir / "dev" / p for p in pair]
    for p in paths:
        if not p.is_file():
            pytest.skip(f"{p} missing")
    return [str(p) for p in paths]


def test_verify_same_and_different(speech_dir: Path, int8_model: Path) -> None:
    same = edgeverify("verify", *_pair(speech_dir, SAME), "--json")
    assert same.returncode == 0, same.stderr
    out = json.loads(same.stdout)
    for key in ("same_speaker", "score", "threshold", "first_file", "second_file", "analyzer_id", "analysis_id", "timestamp"):
        assert key in out
    # calibrated default: the llr is compared with the EER operating point; score stays the raw cosine
    assert out["same_speaker"] is True and out["llr"] >= out["threshold"] and out["operating_point"] == "eer"
    assert out["first_file"].endswith(SAME[0])

    diff = edgeverify("verify", *_pair(speech_dir, DIFFERENT), "--json")
    assert diff.returncode == 0, diff.stderr
    out = json.loads(diff.stdout)
    assert out["same_speaker"] is False and out["llr"] < out["threshold"]

    text = edgeverify("verify", *_pair(speech_dir, SAME), "--threshold", "0.99")  # raw cosine, as in 0.1
    assert text.returncode == 0 and text.stdout.startswith("different speakers")
    both = edgeverify("verify", *_pair(speech_dir, SAME), "--threshold", "0.5", "--target-far", "0.01")
    assert both.returncode == 2 and "either --threshold or --target-far" in both.stderr
    two = edgeverify("verify", *_pair(speech_dir, SAME), "--json", "--threads", "2")
    assert two.returncode == 0 and json.loads(two.stdout)["score"] == pytest.approx(json.loads(same.stdout)["score"], abs=1e-4)
    bad = edgeverify("verify", *_pair(speech_dir, SAME), "--threads", "0")
    assert bad.returncode == 2 and "must be auto or a positive integer" in bad.stderr


def test_verify_bad_inputs_exit_nonzero_with_one_line(tmp_path: Path, speech_dir: Path, int8_model: Path, write_clip) -> None:
    good = _pair(speech_dir, SAME)[0]
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunk" * 10)
    silence = write_clip(np.zeros(16000 * 3, np.float32), 16000, name="silence.wav")
    short = write_clip(np.zeros(1600, np.float32), 8000, name="short.wav")
    for bad, expected in ((str(garbage), "garbage.wav"), (str(tmp_path / "missing.wav"), "no such file"),
                          (str(silence), "no speech"), (str(short), "silence")):
        result = edgeverify("verify", good, bad)
        assert result.returncode == 2, (bad, result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("edgeverify: error:"), result.stderr
        if expected != "silence":
            assert expected in lines[0]


def test_eval_json_on_a_small_trial_list(tmp_path: Path, speech_dir: Path, int8_model: Path) -> None:
    lines = (speech_dir / "dev" / "trials.txt").read_text().splitlines()
    picked = [l for l in lines if l.split()[1].startswith(("so762-0157/", "vctk-p226/"))][:30]
    trials = tmp_path / "trials.txt"
    trials.write_text("\n".join(picked) + "\n")
    result = edgeverify("eval", "--root", str(speech_dir / "dev"), "--trials", str(trials), "--json", "--quiet",
                        "--score", "cosine")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["n_trials"] == len(picked) and out["n_target"] == sum(l.startswith("1") for l in picked)
    assert 0.0 <= out["eer_percent"] <= 50.0 and 0.0 <= out["min_dcf"] <= 1.0 and -1.0 <= out["threshold"] <= 1.0
    assert out["score_mode"] == "cosine" and out["cllr"] is None and out["operating_point"] == "eer"
    # the default (calibrated llr) at a requested false-accept rate: the decisions' error rates and Cllr
    result = edgeverify("eval", "--root", str(speech_dir / "dev"), "--trials", str(trials), "--json", "--quiet",
                        "--target-far", "0.01")
    assert result.returncode == 0, result.stderr
    cal = json.loads(result.stdout)
    assert cal["score_mode"] == "calibrated" and cal["operating_point"] == "far=0.01"
    for key in ("far_percent", "frr_percent", "cllr", "min_cllr"):
        assert 0.0 <= cal[key] <= 100.0, key
    assert cal["min_cllr"] <= cal["cllr"] + 1e-9 and cal["n_trials"] == out["n_trials"]


def test_eval_rejects_bad_trial_file(tmp_path: Path, speech_dir: Path, int8_model: Path) -> None:
    trials = tmp_path / "trials.txt"
    trials.write_text("maybe a.wav\n")
    result = edgeverify("eval", "--root", str(speech_dir / "dev"), "--trials", str(trials))
    assert result.returncode == 2 and "expected '<0|1> <file> <file>'" in result.stderr


def test_bench_json_rows(int8_model: Path) -> None:
    result = edgeverify("bench", "--json", "--models", "int8", "--clips", "3", "--threads", "1", "--runs", "2", "--no-rss")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    (row,) = out["rows"]
    assert row["name"] == f"{DEFAULT_MODEL}-int8" == out["default_model"]  # "int8" alone: the default model
    assert row["model"] == DEFAULT_MODEL and row["precision"] == "int8" and row["default"] is True
    assert row["clip_s"] == 3 and row["threads"] == 1
    assert row["median_ms"] > 0 and row["rtf"] == pytest.approx(row["median_ms"] / 3000, rel=0.01)
    assert out["models"][row["name"]]["file_mb"] < 25 and out["models"][row["name"]]["gmac_3s"] > 1
    assert row["cpu_median_ms"] > 0 and row["ms_per_audio_s"] == pytest.approx(row["median_ms"] / 3, rel=0.01)
    assert out["floor"]["gmac_per_s"] > 0 and out["cpu_int8"]["int8_path"]
    assert 1 <= out["threads_auto"] <= 4


def test_bench_text_output(int8_model: Path) -> None:
    """The human-readable table, with a multi-thread row (no CPU-time figure there)."""
    result = edgeverify("bench", "--models", "int8", "--clips", "1", "--threads", "1,2", "--runs", "1", "--no-rss")
    assert result.returncode == 0, result.stderr
    assert "int8 floor:" in result.stdout and "int8 path:" in result.stdout
    rows = [line.split() for line in result.stdout.splitlines() if line.split()[:2] == [f"{DEFAULT_MODEL}-int8", "1"]]
    assert [row[2] for row in rows] == ["1", "2"]


def test_model_info_metadata(int8_model: Path) -> None:
    result = edgeverify("model", "info", "int8")
    assert result.returncode == 0, result.stderr
    meta = json.loads(result.stdout)
    assert meta["variant"] == "int8" and meta["sample_rate"] == "16000" and meta["embedding_dim"] == "192"
    assert len(meta["source_sha256"]) == 64 and json.loads(meta["features"])["n_mels"] == 80
