"""Inference: hardware detection, backends (onnxruntime, OpenVINO) and the batching scheduler."""
