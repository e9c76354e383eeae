"""seedserve: an onnxruntime model server for the classic deep-learning families."""

__version__ = "0.1.0"
