"""Model build (checkpoint -> fp32 ONNX -> int8) and the score cohort/calibration build. Offline: the daemon never builds."""
