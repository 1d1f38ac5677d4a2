"""The one place a Verifier is built from the configuration (daemon, reload, and the CLI commands that
read the config: enroll, identify, wyoming), so every setting that shapes a decision reaches all of them."""

from __future__ import annotations

import logging
import time
from typing import Optional

from ..core.verifier import Verifier
from ..errors import ConfigError
from ..store.config import Config

log = logging.getLogger(__name__)


def load_verifier(config: Config, threshold: Optional[float] = None, target_far: Optional[float] = None,
                  warm_up: bool = False) -> Verifier:
    """The Verifier the config describes. `threshold`/`target_far` (a command line's) replace the config's
    operating point; giving both is an error."""
    if threshold is not None and target_far is not None:
        raise ConfigError("give either a threshold or a target false-accept rate, not both")
    if threshold is None and target_far is None:
        threshold, target_far = config.threshold, config.target_far
    started = time.perf_counter()
    verifier = Verifier.load(config.model, threads=config.threads, threshold=threshold, vad_mode=config.vad_mode,
                             score_mode=config.score, target_far=target_far)
    if warm_up:
        verifier.warm_up()
        log.info("model %s ready in %.0f ms (%d thread(s), %s scores, %s VAD, decisions at %s)", config.model,
                 1000 * (time.perf_counter() - started), verifier.embedder.threads, verifier.score_mode,
                 config.vad_mode, verifier.operating_point)
    return verifier
