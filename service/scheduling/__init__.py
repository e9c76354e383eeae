"""Who runs when: the schedulers between the data plane and onnxruntime.

- `dynamic_batcher`: requests for one tensor graph stacked into one call (Triton's dynamic batcher).
- `sequence_batcher`: the state of stateful models kept per sequence id (Triton's sequence batcher).
- `decode_engine`: continuous batching of language-model decode steps across requests.
- `step_batcher`: the denoising steps of concurrent image generations sharing calls.
"""
