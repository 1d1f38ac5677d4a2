"""The application layer: what every source (MQTT, microphone, Wyoming, the CLI) calls.

decisions: the decision service; admin: enroll/forget/list; protocol: request/response messages;
worker: the one model thread and its typed jobs; counters; sinks: where decisions go; model: the
Verifier built from config. It imports core/ and store/ only, never an adapter.
"""
