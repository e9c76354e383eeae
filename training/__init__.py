"""Offline training, ONNX export and evaluation for every model family the service serves."""
