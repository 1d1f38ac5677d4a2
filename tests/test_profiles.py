"""Profile store: enrollment maths, refusals, files on disk, identification; the profile CLI on real speech."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeverify.errors import AudioError, ProfileError, UnknownProfileError
from edgeverify.store.profiles import ProfileStore, check_clipping

REPO = Path(__file__).resolve().parents[1]


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _speaker(seed: int, n: int, spread: float = 0.15) -> list[np.ndarray]:
    """n noisy embeddings around one random direction (synthetic 'clips' of one speaker)."""
    rng = np.random.default_rng(seed)
    centre = _unit(rng.standard_normal(192))
    return [centre * 5 + spread * rng.standard_normal(192) for _ in range(n)]  # unnormalised on purpose


def test_enroll_is_renormalised_mean_of_normalised(tmp_path: Path) -> None:
    store = ProfileStore(tmp_path)
    embs = _speaker(1, 3)
    p = store.enroll("alice", embs)
    expected = _unit(np.mean([_unit(e) for e in embs], axis=0))
    np.testing.assert_allclose(p.embedding, expected, atol=1e-9)
    assert p.clips == 3
    loaded = ProfileStore(tmp_path).get("alice")  # a fresh store reads the file
    np.testing.assert_allclose(loaded.embedding, expected, atol=1e-6)


def test_files_private_and_atomic(tmp_path: Path) -> None:
    store = ProfileStore(tmp_path / "state")
    store.enroll("bob", _speaker(2, 1))
    assert stat.S_IMODE(store.dir.stat().st_mode) == 0o700
    f = store.path("bob")
    assert stat.S_IMODE(f.stat().st_mode) == 0o600
    assert [p.name for p in store.dir.iterdir()] == ["bob.json"]  # no temp files left
    doc = json.loads(f.read_text())
    assert doc["name"] == "bob" and len(doc["embedding"]) == 192


@pytest.mark.parametrize("name", ["", "a/b", "..", "x" * 65, "sp ace", "ü", "alice\n", "alice\r\n", "\nalice"])
def test_bad_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(ProfileError, match="invalid profile name"):
        ProfileStore(tmp_path).enroll(name, _speaker(3, 1))


def test_refusals(tmp_path: Path) -> None:
    store = ProfileStore(tmp_path)
    with pytest.raises(ProfileError, match="at least 1 clip"):
        store.enroll("a", [])
    mixed = _speaker(4, 2) + _speaker(5, 1)
    with pytest.raises(ProfileError, match=r"c.wav does not match the other clips \(cosine"):
        store.enroll("a", mixed, clip_names=["a.wav", "b.wav", "c.wav"])
    with pytest.raises(ProfileError, match="x.wav and y.wav do not match each other"):
        store.enroll("a", _speaker(4, 1) + _speaker(5, 1), clip_names=["x.wav", "y.wav"])
    with pytest.raises(ProfileError, match="zero or not finite"):
        store.enroll("a", [np.zeros(192)])
    assert store.list() == []  # nothing written by refused enrollments
    store.enroll("a", _speaker(4, 2))
    with pytest.raises(ProfileError, match="already exists"):
        store.enroll("a", _speaker(4, 2))
    store.enroll("a", _speaker(6, 2), replace=True)


def test_clipping_check() -> None:
    rng = np.random.default_rng(0)
    x = (0.3 * rng.standard_normal(16000)).clip(-0.9, 0.9).astype(np.float32)
    check_clipping(x, "clean.wav")
    x[::20] = 1.0  # 5 % clipped
    with pytest.raises(AudioError, match=r"loud.wav: 5.0% of samples are clipped"):
        check_clipping(x, "loud.wav")


def test_identify_forget_and_external_changes(tmp_path: Path) -> None:
    store = ProfileStore(tmp_path)
    assert store.identify(_unit(np.ones(192)), 0.3) == (None, None, {})
    alice, bob = _speaker(10, 4), _speaker(11, 4)
    store.enroll("alice", alice[:3])
    store.enroll("bob", bob[:3])
    name, score, scores = store.identify(alice[3], 0.3)
    assert name == "alice" and score == scores["alice"] > 0.8 and scores["bob"] < 0.3
    stranger = _speaker(12, 1)[0]
    name, score, _ = store.identify(stranger, 0.3)
    assert name is None and score is not None and score < 0.3
    # another process (the CLI) removes a profile: this store notices without an explicit reload
    ProfileStore(tmp_path).forget("alice")
    assert [p.name for p in store.list()] == ["bob"]
    with pytest.raises(UnknownProfileError):
        store.get("alice")
    with pytest.raises(UnknownProfileError):
        store.forget("alice")


def test_unreadable_profile_is_skipped(tmp_path: Path) -> None:
    store = ProfileStore(tmp_path)
    store.enroll("ok", _speaker(1, 1))
    (store.dir / "broken.json").write_text("{not json")
    assert [p.name for p in ProfileStore(tmp_path).list()] == ["ok"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeverify", *args], capture_output=True, text=True, timeout=60, cwd=REPO)


def test_cli_enroll_identify_forget(tmp_path: Path, speech_dir: Path, int8_model: Path) -> None:
    a = sorted((speech_dir / "dev" / "vctk-p225").glob("*.wav"))
    b = sorted((speech_dir / "dev" / "vctk-p226").glob("*.wav"))
    c = sorted((speech_dir / "dev" / "ls-533").glob("*.wav"))  # other corpus, far from both
    sd = ["--state-dir", str(tmp_path), "--config", str(tmp_path / "none.yaml")]
    r = _cli("enroll", "alice", *map(str, a[:3]), *sd)
    assert r.returncode == 0, r.stderr
    assert _cli("enroll", "bob", *map(str, b[:3]), *sd).returncode == 0
    r = _cli("enroll", "mixed", str(a[0]), str(a[1]), str(c[0]), *sd)
    assert r.returncode == 2 and "does not match the other clips" in r.stderr
    r = _cli("profiles", "--json", *sd)
    assert [p["name"] for p in json.loads(r.stdout)] == ["alice", "bob"]
    r = _cli("identify", str(a[5]), "--json", *sd)
    out = json.loads(r.stdout)
    assert out["speaker"] == "alice" and out["scores"]["alice"] > out["scores"]["bob"]
    r = _cli("identify", str(c[3]), *sd)
    assert r.returncode == 0 and r.stdout.startswith("unknown"), r.stdout
    assert _cli("forget", "alice", *sd).returncode == 0
    r = _cli("forget", "alice", *sd)
    assert r.returncode == 2 and "no profile named 'alice'" in r.stderr


def test_cli_identify_and_enroll_use_the_configs_vad_mode(tmp_path: Path, int8_model: Path, write_clip) -> None:
    """`vad_mode` in the config reaches enroll/identify (it was dropped: their verifier ignored it).

    A clip of quiet noise has no speech: with the default `check` it is refused; with `vad_mode: off` in the
    config the same clip is embedded and the commands answer."""
    noise = (0.01 * np.random.default_rng(3).standard_normal(16000 * 3)).astype(np.float32)
    clip = write_clip(noise, 16000, name="noise.wav")
    state = tmp_path / "state"
    for mode, works in (("check", False), ("off", True)):
        cfg = tmp_path / f"{mode}.yaml"
        cfg.write_text(f"state_dir: {state}\nvad_mode: \"{mode}\"\n")
        r = _cli("identify", str(clip), "--config", str(cfg))
        assert (r.returncode == 0) == works, (mode, r.stdout, r.stderr)
        if works:
            assert "no profiles" in r.stdout
        else:
            assert "speech" in r.stderr
        r = _cli("enroll", "noise", str(clip), "--config", str(cfg))
        assert (r.returncode == 0) == works, (mode, r.stdout, r.stderr)


def test_names_are_unique_regardless_of_case(tmp_path: Path) -> None:
    """Case-preserving, case-insensitively unique: "Alice" is refused beside "alice" (even with replace),
    the stored name keeps its case, and a lookup in the wrong case says which name exists."""
    store = ProfileStore(tmp_path)
    store.enroll("Alice", _speaker(1, 3))
    for replace in (False, True):
        with pytest.raises(ProfileError, match="'Alice' already exists and names differ only in case"):
            store.enroll("alice", _speaker(2, 3), replace=replace)
    assert [p.name for p in store.list()] == ["Alice"]
    with pytest.raises(UnknownProfileError, match="there is 'Alice'"):
        store.forget("ALICE")
    store.enroll("Alice", _speaker(2, 3), replace=True)  # the same name in its own case is a replacement
    store.forget("Alice")
    store.enroll("alice", _speaker(2, 3))  # once forgotten, the name is free in any case


def test_a_replaced_voiceprint_is_logged_as_replaced(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = ProfileStore(tmp_path)
    with caplog.at_level("INFO", logger="edgeverify.store.profiles"):
        first = store.enroll_replacing("bob", _speaker(3, 3))
        second = store.enroll_replacing("bob", _speaker(4, 3), replace=True)
    assert first.replaced is None and second.replaced is not None
    assert second.replaced.created == first.profile.created
    lines = [r.getMessage() for r in caplog.records]
    assert sum("bob enrolled" in line for line in lines) == 1, lines
    assert sum("bob replaced" in line for line in lines) == 1, lines


def test_one_store_shared_by_threads(tmp_path: Path, int8_model: Path) -> None:
    """The model worker and Wyoming's executor share one store: two threads enroll and forget while two
    others list and score with the real cohort scorer. Each writer must see its own change at once (a
    forgotten profile is never scored again), and nobody may crash on the cache swapped under them.
    (Without the store's lock this fails within a second: stale sides, or a KeyError in sides().)"""
    import sys
    import threading
    import time

    from edgeverify.core.scoring import cohort_file, load_scorer

    scorer = load_scorer(cohort_file(int8_model, "int8"), int8_model, "int8")
    store = ProfileStore(tmp_path)
    anchors = [f"anchor{i}" for i in range(12)]
    for i, name in enumerate(anchors):
        store.enroll(name, _speaker(500 + i, 3), scorer=scorer)
    probe = _unit(_speaker(500, 1)[0])
    errors: list[str] = []
    stop = threading.Event()

    def writer(tag: str) -> None:
        try:
            for i in range(60):
                if stop.is_set():
                    return
                name = f"{tag}{i}"
                store.enroll(name, _speaker(100 + i + (1000 if tag == "x" else 0), 1))
                if name not in store.sides(scorer):
                    errors.append(f"{name} enrolled but not in sides()")
                store.forget(name)
                if name in store.sides(scorer) or name in {p.name for p in store.list()}:
                    errors.append(f"{name} forgotten but still scored")
        except Exception as exc:  # noqa: BLE001 -- any crash is the failure being tested
            errors.append(f"writer {tag}: {type(exc).__name__}: {exc}")

    def reader() -> None:
        try:
            while not stop.is_set():
                assert set(anchors) <= set(store.sides(scorer))
                store.list()
                assert store.identify(probe, 0.5)[0] == "anchor0"
        except Exception as exc:  # noqa: BLE001
            errors.append(f"reader: {type(exc).__name__}: {exc!r}")

    threads = [threading.Thread(target=writer, args=(t,)) for t in ("w", "x")] + [
        threading.Thread(target=reader) for _ in range(2)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often: interleavings that are rare otherwise happen here
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        for t in threads[:2]:
            t.join(max(0.1, deadline - time.monotonic()))
        stop.set()
        for t in threads:
            t.join(5)
    finally:
        sys.setswitchinterval(interval)
    assert not errors, errors[:5]
    assert sorted(p.name for p in store.list()) == sorted(anchors)


def test_a_forgotten_profile_is_not_scored_by_a_reader_that_was_mid_way(tmp_path: Path, int8_model: Path) -> None:
    """The interleaving that bit without the lock, made deterministic: a reader (Wyoming's thread) is
    half-way through preparing every profile for scoring when the worker forgets bob. Without the lock
    the reader then stored its stale preparation as current, and every later request scored bob again
    until the next change on disk."""
    import threading

    from edgeverify.core.scoring import cohort_file, load_scorer

    real = load_scorer(cohort_file(int8_model, "int8"), int8_model, "int8")
    inside, resume = threading.Event(), threading.Event()

    class PausingScorer:  # the real scorer, paused once inside side() so the other thread can run
        fingerprint = real.fingerprint

        def side(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            if threading.current_thread().name == "reader" and not inside.is_set():
                inside.set()
                resume.wait(10)
            return real.side(*args, **kwargs)

    scorer = PausingScorer()
    store = ProfileStore(tmp_path)
    store.enroll("alice", _speaker(1, 3))  # no cohort statistics stored: sides() computes them
    store.enroll("bob", _speaker(2, 3))
    reader = threading.Thread(target=store.sides, args=(scorer,), name="reader")
    reader.start()
    assert inside.wait(10)
    seen_by_worker: list[list[str]] = []

    def worker() -> None:  # forget bob, then answer a request (it reads the profiles again)
        store.forget("bob")
        seen_by_worker.append(sorted(store.sides(scorer)))

    forgetter = threading.Thread(target=worker)
    forgetter.start()
    forgetter.join(0.5)  # with the lock it waits for the reader; without, it is done before the reader
    resume.set()
    reader.join(10)
    forgetter.join(10)
    assert not store.path("bob").exists() and seen_by_worker == [["alice"]]
    assert sorted(store.sides(scorer)) == ["alice"]  # the next request must not score bob


def test_the_enrollment_floor_is_the_models_own(tmp_path: Path) -> None:
    """Clips that agree only as much as two different speakers do under CAM++ (cosine ~0.3 to the others'
    mean) pass ECAPA's floor (0.2) but are refused for a CAM++ profile (0.42); an explicit floor wins."""
    from edgeverify.core.model_identity import ModelIdentity
    from edgeverify.store.profiles import MIN_CONSISTENCY_BY_MODEL, ProfileStore

    rng = np.random.default_rng(7)
    common = rng.standard_normal(192)
    clips = [common + 1.6 * rng.standard_normal(192) for _ in range(3)]
    unit = [c / np.linalg.norm(c) for c in clips]
    agree = min(float(u @ ((sum(unit) - u) / np.linalg.norm(sum(unit) - u))) for u in unit)
    assert MIN_CONSISTENCY_BY_MODEL["ecapa"] < agree < MIN_CONSISTENCY_BY_MODEL["campp"], agree
    store = ProfileStore(tmp_path)
    store.enroll("ann", clips, model=ModelIdentity("ecapa", "int8", None))
    with pytest.raises(ProfileError, match="< 0.42"):
        store.enroll("bea", clips, model=ModelIdentity("campp", "int8", None))
    ProfileStore(tmp_path, min_consistency=0.1).enroll("bea", clips, model=ModelIdentity("campp", "int8", None))
