"""The MQTT adapter, assembled: connection, requests, the admin API and Home Assistant.

It is built from the app's parts (decision service, admin use cases, model worker, counters) through
this one public constructor; the daemon adds its Home Assistant link to the decision sinks and calls
tick() from the worker loop. Nothing here runs the model loop or knows the microphone.
"""

from __future__ import annotations

import threading
from typing import Callable, Optional

from ..app.admin import AdminHandler
from ..app.counters import Counters
from ..app.decisions import DecisionService
from ..app.sinks import DecisionSinks
from ..app.worker import ModelWorker
from ..store.config import Config
from . import ha_discovery as had
from .admin_api import MqttAdmin
from .connection import MqttConnection
from .homeassistant import HomeAssistantLink
from .requests import MqttRequests


class MqttService:
    def __init__(self, config: Config, service: DecisionService, worker: ModelWorker, counters: Counters,
                 sinks: DecisionSinks, model_name: str = "int8",
                 connection: Optional[Callable[..., MqttConnection]] = None) -> None:
        """`connection`: what makes the connection (default MqttConnection; tests pass one without a broker)."""
        m = config.mqtt
        self.base = f"{m.topic_prefix}/{config.device_id}"
        self.connection = (connection or MqttConnection)(config, f"{self.base}/availability", counters)
        self.requests = MqttRequests(config, self.connection, service, worker, counters, sinks, self.base)
        topics = had.Topics(self.base, m.discovery_prefix, config.device_id)
        admin = MqttAdmin(config, self.connection, self.requests, AdminHandler(service, config.admin), worker,
                          counters, topics.admin_request, topics.admin_response)
        self.admin = admin
        self.ha = HomeAssistantLink(config, self.connection, topics, admin, service, counters, model_name)

    @property
    def connected(self) -> threading.Event:
        return self.connection.connected

    @property
    def network_dead(self) -> bool:
        return self.connection.network_dead

    def liveness_problem(self) -> Optional[str]:
        return self.connection.liveness_problem()

    def start(self) -> None:
        self.connection.start()

    def stop(self, timeout: float = 3.0) -> None:
        self.ha.publish_stopped()  # before "offline": HA tells a clean stop from a crash (the will)
        self.connection.stop(timeout)

    def set_max_payload_bytes(self, limit: int) -> None:
        """A reload: the request size limit (lower: at once; higher: after a restart, see MqttRequests)."""
        self.requests.set_max_payload_bytes(limit)

    def reconfigure(self, config: Config) -> None:
        """A reload: the MQTT settings declared live (the size limit, mqtt.allow_capture)."""
        self.requests.set_max_payload_bytes(config.limits.max_payload_bytes)
        self.requests.allow_capture = config.mqtt.allow_capture

    def tick(self) -> None:
        """From the worker loop: refresh the expiring `online`, publish diagnostics when due."""
        self.connection.refresh_online()
        self.ha.publish_diagnostics()
