"""The gate measurement (edgeverify.tools.gate) computes what it says: disjoint speakers, babble of distinct
non-enrolled voices at the stated levels, the TV at the stated SNR, and profiles scored as the store does."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from edgeverify.core.audio import read_audio
from edgeverify.store.profiles import ProfileStore
from edgeverify.tools import gate


def _files(n_rich: int = 12, n_poor: int = 6) -> dict[str, list[str]]:
    files = {f"so-{i:02d}": [f"so-{i:02d}/{j}.wav" for j in range(6)] for i in range(n_rich)}
    files.update({f"ls-{i:02d}": [f"ls-{i:02d}/0.wav"] for i in range(n_poor)})
    files["emodb-01"] = [f"emodb-01/{j}.wav" for j in range(8)]
    return files


def test_enrolled_and_babble_speakers_are_disjoint_and_seeded() -> None:
    files = _files()
    enrolled, pool = gate.split_speakers(files, 8, seed=18)
    assert len(enrolled) == len(set(enrolled)) == 8
    assert not set(enrolled) & set(pool)
    assert set(enrolled) | set(pool) == set(files)
    assert all(len(files[s]) >= gate.MIN_CLIPS and not s.startswith("emodb") for s in enrolled)
    assert gate.split_speakers(files, 8, seed=18) == (enrolled, pool)
    assert gate.split_speakers(files, 8, seed=19)[0] != enrolled
    a, b = gate.enroll_split(files["so-03"], 18, "so-03")
    assert len(a) == 3 and len(b) == 3 and not set(a) & set(b)
    with pytest.raises(SystemExit):
        gate.split_speakers(files, 13, seed=18)


def _pool(n: int = 8) -> gate.Pool:
    rng = np.random.default_rng(0)
    clips = {f"p{i}": [rng.standard_normal(8000 + 500 * i) * (0.01 * (i + 1))] for i in range(n)}
    return gate.Pool(clips, {s: [float(np.mean(c[0] ** 2))] for s, c in clips.items()})


@pytest.mark.parametrize("condition", gate.BABBLE_CONDITIONS)
def test_babble_is_3_to_6_distinct_pool_voices_at_the_stated_levels(condition: str) -> None:
    pool = _pool()
    for j in range(10):
        x, meta = gate.babble(pool, condition, 16000, np.random.default_rng([1, j]), [np.array([0.0, 1.0])], j)
        assert x.shape == (16000,) and np.all(np.isfinite(x))
        names = meta["speakers"]
        assert 3 <= len(names) <= 6 and len(set(names)) == len(names) and set(names) <= set(pool.clips)
        levels = meta["levels_db"]
        if condition == "equal":
            assert levels == [0.0] * len(names)
        if condition == "unequal":
            assert levels[0] == 0.0 and all(-15.0 <= v <= -3.0 for v in levels[1:])
        assert ("room" in meta) == (condition == "tv-room")


def test_mix_scales_each_voice_to_its_level() -> None:
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal(4000) * 0.3, rng.standard_normal(4000) * 0.01
    only_a = gate.mix([a, b * 0], [np.mean(a**2), np.mean(b**2)], [0.0, -10.0])
    only_b = gate.mix([a * 0, b], [np.mean(a**2), np.mean(b**2)], [0.0, -10.0])
    assert 10 * math.log10(np.mean(only_a**2) / np.mean(only_b**2)) == pytest.approx(10.0, abs=1e-9)


def test_the_tv_is_mixed_at_the_stated_snr(synth) -> None:  # noqa: ANN001
    speech = synth(2.0, 16000, bursts=[(0.3, 1.7)]).astype(np.float64)
    tv = np.random.default_rng(3).standard_normal(speech.size)
    for snr in (10.0, 0.0):
        y = gate.with_tv(speech, tv, snr)
        assert 10 * math.log10(gate.speech_power(speech) / np.mean((y - speech) ** 2)) == pytest.approx(snr, abs=1e-6)
    pcm = gate.to_int16(gate.with_tv(speech, tv, 0.0))
    assert pcm.dtype == np.int16
    level = 10 * math.log10(gate.speech_power(pcm / 32768.0))
    assert level == pytest.approx(gate.OUTPUT_DBFS, abs=1.0)


def test_profiles_are_scored_as_the_profile_store_scores_them(
    int8_verifier, speech_dir: Path, tmp_path: Path  # noqa: ANN001
) -> None:
    v = int8_verifier
    files = gate.speaker_files(speech_dir / "dev")
    people = sorted(s for s, f in files.items() if s.startswith("so762") and len(f) >= 6)[:2]
    store = ProfileStore(tmp_path)
    household, own = {}, {}
    for s in people:
        enroll, rest = gate.enroll_split(files[s], 18, s)
        got = [v.embed_with_speech(read_audio(speech_dir / "dev" / f)) for f in enroll]
        embs, secs = [e for e, _ in got], [t for _, t in got]
        store.enroll(s, embs, speech_s=secs, scorer=v.scorer, model=v.model)
        household[s] = gate.profile_side(v.scorer, embs, secs)
        own[s] = speech_dir / "dev" / enroll[0]
    stored = store.sides(v.scorer)
    for s in people:
        mine, theirs = household[s], stored[s]
        np.testing.assert_allclose(mine[0], theirs[0], atol=1e-7)
        assert mine[1].speech_s == pytest.approx(theirs[1].speech_s, abs=0.01)
        for band in theirs[1].centred:
            np.testing.assert_allclose(mine[1].centred[band], theirs[1].centred[band], atol=1e-6)
    for s in people:  # an enrolled person's own clip is let through under their own name, at both points
        pcm = gate.to_int16(read_audio(own[s]).samples.astype(np.float64))
        test, refused = gate.embed(v, pcm, "own")
        assert refused is None
        assert gate.gate(v, test, household, None) == s
        assert gate.gate(v, test, household, 0.01) == s
    assert gate.gate(v, None, household, None) is None  # no speech: stopped
    test, refused = gate.embed(v, np.zeros(16000 * 2, dtype=np.int16), "silence")
    assert test is None and refused is not None
