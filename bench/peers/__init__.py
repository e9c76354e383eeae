"""The peers we compare against, each in its own virtual environment under build/bench-venvs/.

Everything here follows /work/shared/PEERS.md: pinned versions, onnxruntime pinned to the version
the service uses, one intra-op thread, one worker, loopback only. Each peer serves the same ONNX
file with its own batching on; `install` builds its venv (idempotent: a marker file records the
requirement list it was built from), `command` says how to start it.
"""
