"""edgeverify: on-device speaker verification (ECAPA-TDNN, int8 ONNX, MQTT, systemd)."""

__version__ = "0.3.0.dev0"
