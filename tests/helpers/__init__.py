"""Tools the tests share: a live `python -m service` (live_server), tiny real ONNX models
(onnx_builders, generator_builders, model_zoo), copies of the shipped models (shipped_models), the
Prometheus exposition reader (scrape), picture makers (pictures), third-party files pinned by
sha256 (thirdparty), the docs' code blocks (doc_blocks), completion answers (completion_answers),
the playground's language-model contract stub (lm_contract) and KServe's SDK in a process of its
own (kserve_sdk). Importable as `helpers.*`: pytest puts tests/ on the path (pyproject
`pythonpath`)."""
