"""Tools the tests share: a live `python -m service` (live_server), ONNX model builders, the
Prometheus exposition reader (metrics), picture makers (pictures), third-party files pinned by
sha256 (thirdparty), the README's code blocks (doc_blocks), completion answers (completion_answers)
and KServe's SDK in a process of its own (kserve_sdk). Importable as `helpers.*`: pytest puts
tests/ on the path (pyproject `pythonpath`)."""
