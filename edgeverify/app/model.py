"""The one place a Verifier is built (daemon, reload, and every CLI command that embeds: verify, eval,
enroll, identify, wyoming), so every setting that shapes a decision reaches all of them -- and the one
place that decides which model `model: auto` means.

`model: auto` (the default) is the model the existing profiles were enrolled with when they all agree, else
the default model. So a device upgraded to a release whose default model is another one keeps scoring its
profiles with the model they were enrolled with, and says how to move to the new default; a fresh device
(no profiles) gets the default. An explicit model never falls back: profiles of another model are reported
(start-up log, sd_notify status, diagnostics) and answered with `profile_model_mismatch`, never scored.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Optional, Union

from ..core import model_store
from ..core.model_identity import KNOWN_MODELS, ModelIdentity
from ..core.scoring import DEFAULT_SCORE_MODE
from ..core.vad import DEFAULT_VAD_MODE
from ..core.verifier import Verifier
from ..errors import ConfigError
from ..store.config import AUTO_MODEL, PRECISIONS, Config
from ..store.profiles import ProfileStore

log = logging.getLogger(__name__)


def default_model() -> str:
    """The model a device without profiles uses (the model store's choice, made by measurement)."""
    return str(getattr(model_store, "DEFAULT_MODEL", "ecapa"))  # ECAPA-only stores have no DEFAULT_MODEL


@dataclass(frozen=True)
class ModelChoice:
    model: str  # as Verifier.load takes it: a model name or a path to an .onnx file
    why: str  # for the log: "configured", "auto: ...", ...
    note: Optional[str] = None  # something the user should act on (logged as a warning)


def choose_model(setting: str, store: Optional[ProfileStore] = None) -> ModelChoice:
    """What a `model:` setting means now: anything but auto as it is; auto from the profiles (see module doc)."""
    if setting != AUTO_MODEL:
        return ModelChoice(setting, "configured")
    default = default_model()
    names = sorted({p.model.name for p in store.list()}) if store is not None else []
    if len(names) == 1 and names[0] in KNOWN_MODELS:
        name = names[0]
        if name == default:
            return ModelChoice(name, "auto: the default, and the model every profile was enrolled with")
        return ModelChoice(name, f"auto: every profile was enrolled with {name}", note=(
            f"model: auto keeps {name}, the model every profile was enrolled with; the default model is now "
            f"{default}: to move to it, set model: {default} and enroll each profile again (until then, "
            f"profiles of {name} are not scored)"))
    if not names:
        return ModelChoice(default, "auto: the default (no profiles yet)")
    return ModelChoice(default, f"auto: the default (profiles were enrolled with {', '.join(names)})")


def auto_moved(config: Config, store: ProfileStore, running: ModelIdentity) -> bool:
    """`model: auto` now means another model than the running one (the profiles changed: a reload loads it)."""
    return config.model_name == AUTO_MODEL and choose_model(AUTO_MODEL, store).model != running.name


def build_verifier(
    model: str = AUTO_MODEL,
    precision: Optional[str] = None,
    threads: Union[int, str] = "auto",
    threshold: Optional[float] = None,
    target_far: Optional[float] = None,
    vad_mode: str = DEFAULT_VAD_MODE,
    score_mode: str = DEFAULT_SCORE_MODE,
    store: Optional[ProfileStore] = None,
    warm_up: bool = False,
) -> Verifier:
    """A Verifier from explicit settings (a config's or a command line's). `store`: the profiles `auto`
    follows (None: none, so auto is the default model)."""
    if threshold is not None and target_far is not None:
        raise ConfigError("give either a threshold or a target false-accept rate, not both")
    if model in PRECISIONS:  # as in the config: before there were two models, `int8`/`fp32` meant ECAPA
        if precision is not None and precision != model:
            raise ConfigError(f"model {model!r} contradicts precision {precision!r}: give model ecapa and precision {precision}")
        model, precision = "ecapa", model
    choice = choose_model(model, store)
    if choice.note:
        log.warning("%s", choice.note)
    started = time.perf_counter()
    verifier = Verifier.load(choice.model, threads=threads, threshold=threshold, vad_mode=vad_mode,
                             score_mode=score_mode, target_far=target_far, precision=precision)
    if warm_up:
        verifier.warm_up()
        log.info("model %s (%s) ready in %.0f ms (%d thread(s), %s scores, %s VAD, decisions at %s)",
                 verifier.model.label, choice.why, 1000 * (time.perf_counter() - started), verifier.embedder.threads,
                 verifier.score_mode, vad_mode, verifier.operating_point)
    return verifier


def load_verifier(config: Config, threshold: Optional[float] = None, target_far: Optional[float] = None,
                  warm_up: bool = False, store: Optional[ProfileStore] = None, model: Optional[str] = None,
                  precision: Optional[str] = None) -> Verifier:
    """The Verifier the config describes. `threshold`/`target_far` (a command line's) replace the config's
    operating point; giving both is an error. `model`/`precision` (a command line's) replace the config's."""
    if threshold is not None and target_far is not None:
        raise ConfigError("give either a threshold or a target false-accept rate, not both")
    if threshold is None and target_far is None:
        threshold, target_far = config.threshold, config.target_far
    if model is None:
        model, precision = config.model_name, precision or config.precision
    return build_verifier(model, precision, config.threads, threshold, target_far, config.vad_mode, config.score,
                          store, warm_up)


@dataclass(frozen=True)
class ProfileModels:
    """The profiles as the running model sees them."""

    model: ModelIdentity
    other_model: dict[str, ModelIdentity] = field(default_factory=dict)  # never scored: re-enroll them
    other_build: dict[str, ModelIdentity] = field(default_factory=dict)  # same model, another file: scored

    @property
    def problem(self) -> Optional[str]:
        """One line for the journal, sd_notify status and diagnostics; None when every profile is scored."""
        if not self.other_model:
            return None
        by_model: dict[str, list[str]] = {}
        for name, m in sorted(self.other_model.items()):
            by_model.setdefault(m.name, []).append(name)
        which = "; ".join(f"{len(names)} enrolled with {m} ({', '.join(names[:5])}{', ...' if len(names) > 5 else ''})"
                          for m, names in sorted(by_model.items()))
        return f"{len(self.other_model)} profile(s) not scored by {self.model.name}: {which}; re-enroll them"


def check_profiles(store: ProfileStore, model: ModelIdentity) -> ProfileModels:
    other_model, other_build = {}, {}
    for p in store.list():
        if not p.model.same_model(model):
            other_model[p.name] = p.model
        elif not p.model.same_build(model):
            other_build[p.name] = p.model
    return ProfileModels(model, other_model, other_build)


def report_profiles(store: ProfileStore, model: ModelIdentity) -> ProfileModels:
    """Log what the running model makes of the profiles (start-up and reload)."""
    found = check_profiles(store, model)
    if found.problem:
        log.warning("%s", found.problem)
    if found.other_build:
        log.info("%d profile(s) were enrolled with another build of %s (scored: builds of one model agree "
                 "to within rounding): %s", len(found.other_build), model.name, ", ".join(sorted(found.other_build)))
    return found
