"""Turns a checkpoint into servable artefacts: ONNX, TensorRT plans, and a Triton model repository."""
