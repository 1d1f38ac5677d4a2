"""Profiles are model-specific: each records the model it was enrolled with, a profile of another model is
never scored (an error for verify, skipped by identify, reported for re-enrollment), and `model: auto`
keeps an upgraded device on the model its profiles were enrolled with. The upgrade path runs end to end in
process on the real ECAPA int8 model and real recordings."""

from __future__ import annotations

import base64
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from edgeverify.app.admin import AdminHandler, parse_admin_request
from edgeverify.app.decisions import DecisionService
from edgeverify.app.model import build_verifier, check_profiles, choose_model, load_verifier
from edgeverify.app.protocol import encode_request, parse_request
from edgeverify.core import model_store
from edgeverify.core.audio import read_audio
from edgeverify.core.model_identity import ModelIdentity, from_record, of_model_file
from edgeverify.core.verifier import Verifier
from edgeverify.errors import ConfigError, ModelError, ProfileModelMismatchError
from edgeverify.store.config import AdminConfig, parse_config
from edgeverify.store.enrollment import enroll
from edgeverify.store.profiles import ProfileStore

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from broker import MOSQUITTO  # noqa: E402


def _load_ecapa(precision: str) -> Verifier:
    """ECAPA by name, whatever the default model is (skips when not built, fails when CI requires it)."""
    import os

    try:
        return Verifier.load("ecapa", precision=precision)
    except ModelError as exc:
        if os.environ.get("EDGEVERIFY_REQUIRE_MODEL") == "1":
            pytest.fail(f"ecapa {precision} model required but missing: {exc.message}")
        pytest.skip(exc.message)


@pytest.fixture(scope="module")
def ecapa() -> Verifier:
    """The real ECAPA int8 model, as a device of the previous release ran it."""
    return _load_ecapa("int8")


def _clips(speech_dir: Path, speaker: str) -> list[Path]:
    files = sorted((speech_dir / "dev" / speaker).glob("*.wav"))
    assert len(files) >= 4, f"{speaker}: need 4 recordings"
    return files


@pytest.fixture(scope="module")
def people(speech_dir: Path) -> dict[str, list[Path]]:
    """Two enrolled speakers (3 clips to enroll, the 4th to test) and a stranger, all real recordings."""
    speakers = sorted(d.name for d in (speech_dir / "dev").iterdir()
                      if d.name.startswith("ls-") and len(list(d.glob("*.wav"))) >= 4)
    alice, bob, stranger = speakers[:3]
    return {"alice": _clips(speech_dir, alice), "bob": _clips(speech_dir, bob), "stranger": _clips(speech_dir, stranger)}


def _as_previous_release_wrote_it(store: ProfileStore, name: str, setting: object = "int8") -> None:
    """Rewrite a profile's model record the way releases before model records wrote it: the `model:`
    setting at enrollment ("int8", "fp32", a path), or nothing at all."""
    path = store.path(name)
    doc = json.loads(path.read_text())
    if setting is None:
        doc.pop("model", None)
    else:
        doc["model"] = setting
    path.write_text(json.dumps(doc))
    store.reload()


def _request(kind: str, clip: Path, **fields: object):
    return parse_request(encode_request(kind, first=(clip.name, clip.read_bytes()), **fields))


def _campp_verifier(ecapa_verifier: Verifier) -> Verifier:
    """The CAM++ model when it is built here; until then ECAPA's own embedder and cohort under CAM++'s
    name -- its scores against ECAPA profiles would even look plausible, which is the point: the refusal
    must come from the recorded model, never from the numbers."""
    for score in ("calibrated", "cosine"):
        try:
            return build_verifier("campp", score_mode=score)
        except (ModelError, ConfigError):
            continue
    return Verifier(ecapa_verifier.embedder, scorer=ecapa_verifier.scorer, model_name="campp",
                    model=ModelIdentity("campp", "int8", "c" * 64))


def test_the_model_record_of_profiles_from_earlier_releases() -> None:
    assert from_record(None) == ModelIdentity("ecapa", "int8")  # 0.1: no record at all
    assert from_record("int8") == ModelIdentity("ecapa", "int8")  # the `model:` setting at enrollment
    assert from_record("fp32") == ModelIdentity("ecapa", "fp32")
    assert from_record("/opt/models/ecapa-fp32.onnx") == ModelIdentity("ecapa", "fp32")
    assert from_record("/opt/models/mine.onnx") == ModelIdentity("ecapa", "int8")
    sha = "ab" * 32
    assert from_record({"name": "campp", "precision": "fp32", "sha256": sha}) == ModelIdentity("campp", "fp32", sha)
    assert from_record({"name": "campp", "precision": "int4", "sha256": "x"}) == ModelIdentity("campp", "", None)


def test_a_loaded_model_knows_its_identity_and_the_sha_is_of_the_file(ecapa: Verifier, tmp_path: Path) -> None:
    import hashlib

    m = ecapa.model
    assert (m.name, m.precision) == ("ecapa", "int8")
    int8_model = ecapa.embedder.path
    assert m.sha256 == hashlib.sha256(int8_model.read_bytes()).hexdigest()
    # a copy under any file name is still ECAPA (our builds say so in their metadata), the same file
    copy = tmp_path / "renamed.onnx"
    copy.write_bytes(int8_model.read_bytes())
    assert of_model_file(copy, ecapa.embedder.metadata) == m
    # the package version stamped in the metadata (`producer`) plays no part in the identity
    assert of_model_file(copy, {**ecapa.embedder.metadata, "producer": "edgeverify 9.9"}) == m


def test_upgrading_a_device_with_ecapa_profiles_never_gives_a_wrong_score(
    tmp_path: Path, people: dict[str, list[Path]], ecapa: Verifier, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # a device of the previous release: ECAPA profiles, recorded as that release recorded them
    store = ProfileStore(tmp_path)
    for name in ("alice", "bob"):
        report = enroll(ecapa, store, name, people[name][:3])
        assert report.ok, report.error
        _as_previous_release_wrote_it(store, name, "int8" if name == "alice" else None)
    assert {p.model for p in store.list()} == {ModelIdentity("ecapa", "int8")}

    # ... upgraded to a release whose default model is CAM++, config left at `model: auto`
    monkeypatch.setattr(model_store, "DEFAULT_MODEL", "campp", raising=False)
    config = parse_config({"state_dir": str(tmp_path)})
    assert config.model_name == "auto"
    with caplog.at_level(logging.WARNING, logger="edgeverify.app.model"):
        verifier = load_verifier(config, store=store)
    assert verifier.model.name == "ecapa"  # keeps the model the profiles were enrolled with, and says why
    assert any("model: auto keeps ecapa" in r.getMessage() and "set model: campp" in r.getMessage()
               for r in caplog.records)
    service = DecisionService(verifier, store)
    alice_test, bob_test, stranger = people["alice"][3], people["bob"][3], people["stranger"][0]
    assert service.handle(_request("identify", alice_test)).result["speaker"] == "alice"
    assert service.handle(_request("identify", bob_test)).result["speaker"] == "bob"
    assert service.handle(_request("identify", stranger)).result["speaker"] is None
    assert service.handle(_request("verify_profile", bob_test, profile="bob")).result["same_speaker"] is True
    assert service.handle(_request("verify_profile", alice_test, profile="bob")).result["same_speaker"] is False
    found = check_profiles(store, verifier.model)
    assert found.problem is None and sorted(found.other_build) == ["alice", "bob"]  # recorded without a sha256
    admin_ecapa = AdminHandler(service, AdminConfig())
    assert admin_ecapa.reenroll_status() is None

    # the user opts into CAM++ explicitly: ECAPA profiles are refused by name, never scored
    campp = _campp_verifier(ecapa)
    service = DecisionService(campp, store, identify_scores=True)  # every scored name listed: none of ECAPA's
    with pytest.raises(ProfileModelMismatchError) as err:
        service.handle(_request("verify_profile", alice_test, profile="alice"))
    assert err.value.code == "profile_model_mismatch" and "re-enroll 'alice'" in err.value.message
    result = service.handle(_request("identify", alice_test)).result
    assert result["speaker"] is None and result["scores"] == {}
    assert result["skipped_profiles"]["count"] == 2 and "re-enroll" in result["skipped_profiles"]["reason"]
    admin = AdminHandler(service, AdminConfig())
    status = admin.reenroll_status()
    assert status is not None and "re-enroll" in status and "alice" in status and "bob" in status
    listed = admin.handle(parse_admin_request(b'{"type": "list"}', 10)).result
    assert {p["name"]: p["scored"] for p in listed["profiles"]} == {"alice": False, "bob": False}
    assert all(p["model"]["name"] == "ecapa" for p in listed["profiles"])

    # re-enrolling alice moves her to CAM++; bob stays skipped until he is re-enrolled too
    clips = [{"name": f.name, "audio_b64": base64.b64encode(f.read_bytes()).decode()} for f in people["alice"][:3]]
    payload = json.dumps({"type": "enroll", "name": "alice", "clips": clips, "replace": True}).encode()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="edgeverify.app.admin"):
        answer = admin.handle(parse_admin_request(payload, 10))
    assert answer.ok and answer.result["replaced"] is True
    assert any("enroll alice" in r.getMessage() and "replaced the existing voiceprint" in r.getMessage()
               for r in caplog.records)
    assert store.get("alice").model == campp.model
    result = service.handle(_request("identify", alice_test)).result
    assert result["speaker"] == "alice" and result["skipped_profiles"]["count"] == 1
    assert list(result["scores"]) == ["alice"]
    status = admin.reenroll_status()
    assert status is not None and "bob" in status and "alice" not in status.split(":", 1)[1]

    # profiles of both models: auto means the default; once all are CAM++, auto means CAM++ by itself
    assert choose_model("auto", store).model == "campp"
    store.forget("bob")
    choice = choose_model("auto", store)
    assert choice.model == "campp" and choice.note is None


def test_a_profile_of_the_same_model_from_another_build_is_scored(
    tmp_path: Path, people: dict[str, list[Path]], ecapa: Verifier
) -> None:
    """Same name, other sha256 (fp32 vs int8, or a rebuild with other quantisation): the same function to
    within rounding, so it is scored -- and reported as another build, so the rebuild is visible."""
    store = ProfileStore(tmp_path)
    assert enroll(ecapa, store, "alice", people["alice"][:3]).ok
    fp32 = _load_ecapa("fp32")
    assert fp32.model.name == "ecapa" and fp32.model.sha256 != ecapa.model.sha256
    found = check_profiles(store, fp32.model)
    assert found.problem is None and list(found.other_build) == ["alice"]
    result = DecisionService(fp32, store).handle(_request("identify", people["alice"][3])).result
    assert result["speaker"] == "alice" and "skipped_profiles" not in result


def test_profiles_cli_lists_the_model_and_what_is_not_scored(
    tmp_path: Path, people: dict[str, list[Path]], ecapa: Verifier
) -> None:
    store = ProfileStore(tmp_path / "state")
    assert enroll(ecapa, store, "alice", people["alice"][:3]).ok
    config = tmp_path / "config.yaml"

    def profiles(model: str) -> tuple[str, list]:
        config.write_text(f"state_dir: {tmp_path / 'state'}\nmodel: {model}\n")
        run = [sys.executable, "-m", "edgeverify", "profiles", "--config", str(config)]
        text = subprocess.run(run, capture_output=True, text=True, check=True, cwd=REPO).stdout
        rows = json.loads(subprocess.run(run + ["--json"], capture_output=True, text=True, check=True, cwd=REPO).stdout)
        return text, rows

    text, rows = profiles("auto")
    assert "ecapa int8" in text and "re-enroll" not in text
    assert rows[0]["model"]["name"] == "ecapa" and rows[0]["model"]["sha256"] == ecapa.model.sha256
    assert rows[0]["scored"] is True
    text, rows = profiles("campp")
    assert "not scored by campp: re-enroll" in text and rows[0]["scored"] is False


def test_cli_model_and_precision_flags(people: dict[str, list[Path]], ecapa: Verifier) -> None:
    a, b = people["alice"][0], people["alice"][1]
    run = [sys.executable, "-m", "edgeverify", "verify", str(a), str(b), "--json", "--model", "ecapa", "--precision", "int8"]
    out = json.loads(subprocess.run(run, capture_output=True, text=True, check=True, cwd=REPO).stdout)
    assert (out["model"], out["precision"], out["same_speaker"]) == ("ecapa", "int8", True)
    bad = subprocess.run(run[:-4] + ["--model", "int8", "--precision", "fp32"], capture_output=True, text=True, cwd=REPO)
    assert bad.returncode != 0 and "contradicts" in bad.stderr and "Traceback" not in bad.stderr
    # `int8` alone means ECAPA at int8, as in the config, whatever the default model is
    old = json.loads(subprocess.run(run[:-4] + ["--model", "int8"], capture_output=True, text=True, check=True,
                                    cwd=REPO).stdout)
    assert (old["model"], old["precision"]) == ("ecapa", "int8")


def test_admin_logs_names_escaped_and_refuses_a_trailing_newline(
    tmp_path: Path, ecapa: Verifier, caplog: pytest.LogCaptureFixture
) -> None:
    """A client's text never reaches the journal raw: no forged or split log lines."""
    from edgeverify.errors import ProfileError

    admin = AdminHandler(DecisionService(ecapa, ProfileStore(tmp_path)), AdminConfig())
    with pytest.raises(ProfileError, match="invalid profile name"):
        parse_admin_request(json.dumps({"type": "forget", "name": "alice\n"}).encode(), 10)
    evil = "alice\nedgeverify: admin enroll bob: ok\x1b[2J\u2028"
    with caplog.at_level(logging.INFO, logger="edgeverify.app.admin"):
        admin.handle(parse_admin_request(json.dumps({"type": "list", "name": evil}).encode(), 10))
        from edgeverify.app.admin import AdminRequest

        admin.handle(AdminRequest(type="forget", name=evil))  # however it got there
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and all("alice" in line for line in lines)
    assert not any(ch in line for line in lines for ch in "\n\r\x1b\u2028"), lines


@pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto not installed (apt-get install mosquitto)")
def test_the_daemon_reports_and_refuses_profiles_of_another_model(
    tmp_path: Path, broker, hub, people: dict[str, list[Path]], ecapa: Verifier  # noqa: ANN001
) -> None:
    """`edgeverify run` on ECAPA with one ECAPA profile and one written by a CAM++ device: the journal and
    the sd_notify status say so at start, verify against the CAM++ profile answers profile_model_mismatch
    over MQTT, identify names the ECAPA speaker and counts the skipped one."""
    from daemon_process import DaemonProcess, ask

    state = tmp_path / "state"
    store = ProfileStore(state)
    assert enroll(ecapa, store, "alice", people["alice"][:3]).ok
    campp = ModelIdentity("campp", "int8", "c" * 64)
    # carol's profile as a CAM++ device writes it (here from ECAPA embeddings: only the record refuses it)
    store.enroll("carol", [ecapa.embed(read_audio(f)) for f in people["bob"][:3]], model=campp)
    d = DaemonProcess(tmp_path, broker.port, ecapa.embedder.path, state, "mixed")
    try:
        statuses = [m for _, m in d.notify.messages if m.startswith("STATUS=") or "\nSTATUS=" in m]
        assert any("1 profile(s) not scored by ecapa" in m and "carol" in m and "re-enroll" in m for m in statuses), statuses
        assert any("(1 of another model: re-enroll)" in m for m in statuses), statuses  # READY=1's status line
        log = d.log_path.read_text()
        assert "1 profile(s) not scored by ecapa: 1 enrolled with campp (carol); re-enroll them" in log
        topic = f"{d.base}/request"
        r = ask(hub, topic, encode_request("verify_profile", first=(people["bob"][3].name, people["bob"][3].read_bytes()),
                                           profile="carol"))
        assert r["ok"] is False and r["error"]["code"] == "profile_model_mismatch", r
        assert "re-enroll 'carol'" in r["error"]["message"]
        r = ask(hub, topic, encode_request("identify", first=(people["alice"][3].name, people["alice"][3].read_bytes())))
        assert r["ok"] and r["speaker"] == "alice" and r["skipped_profiles"]["count"] == 1, r
        assert "scores" not in r  # names are not listed by default (mqtt.identify_scores)
    finally:
        d.stop()
