"""Wire formats the service speaks: the Open Inference Protocol (JSON and binary tensors)."""
