"""The language-model runtime: a tokenizer, the step-graph decoder built at load, the decode
engine that batches every running sequence's steps (made on first use) and the batcher that
reads concurrent next-word prompts in one call."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from service.errors import ModelLoadError
from service.repository import Repository, read_json
from service.runtimes.tensor import TensorModel, batch_policy
from service.scheduling.decode_engine import DecodeEngine
from service.scheduling.dynamic_batcher import Batcher
from service.tasks.textgen import Decoder
from service.tasks.tokenizer import WordTokenizer


class LanguageModel(TensorModel):
    task = "language-model"
    noun = "a language model"
    finite_inputs = True
    decoder: Decoder
    engine: DecodeEngine | None = None  # made on first use; closed with the version
    prefill: Batcher | None = None  # next-word prompts of concurrent requests, one call

    def prepare(self, repository: Repository) -> None:
        """Load the vocabulary beside the graphs and build the step-graph decoder, warmed up."""
        raw = self.config.raw
        vocab = (raw.get("tokenizer") or {}).get("vocab")
        if "step" not in self.graphs or "step" not in raw or not isinstance(vocab, str):
            raise ModelLoadError(
                f"model {self.name!r}: a language model needs graphs.step, a step section and "
                "tokenizer.vocab in config.json"
            )
        folder = repository.version_dir(self.name, self.version).resolve()
        path = (folder / vocab).resolve()
        if path.parent != folder or not path.is_file():
            raise ModelLoadError(
                f"model {self.name!r}: tokenizer.vocab {vocab!r} is not in {folder}"
            )
        try:
            tokenizer = WordTokenizer.from_json(read_json(path))
            self.decoder = Decoder(self.graphs["step"].run, raw, tokenizer)
            logits = self.decoder.read("").logits  # warm-up: a broken step graph fails here
        except ModelLoadError:
            raise
        except Exception as exc:  # a malformed vocabulary, step section or graph
            raise ModelLoadError(f"model {self.name!r}: language model: {exc}") from None
        if logits.shape != (len(tokenizer),):
            raise ModelLoadError(
                f"model {self.name!r}: step graph scores {logits.shape[-1]} tokens but the "
                f"vocabulary has {len(tokenizer)}"
            )
        super().prepare(repository)
        settings = self.serving.settings
        policy = batch_policy(self.config, settings)
        if policy is not None:
            serving = self.serving
            inline_max_s = settings.next_word_inline_max_ms / 1e3
            self.prefill = Batcher(
                PrefillLogits(self),
                dataclasses.replace(policy, inline_max_s=inline_max_s),
                serving.executor,
                serving.metrics,
                self.labels,
                self.stats,
            )

    def decode_engine(self) -> DecodeEngine:
        """The decode engine of this version, made on first use (its thread starts then)."""
        if self.engine is None:
            serving = self.serving
            settings = serving.settings
            self.engine = DecodeEngine(
                self.decoder,
                settings.max_decode_batch,
                serving.metrics,
                self.labels,
                settings.max_unread_stream_tokens,
                settings.max_prefill_tokens,
            )
        return self.engine

    async def close(self) -> None:
        if self.prefill is not None:
            await self.prefill.close()
        if self.engine is not None:
            await self.engine.close()
        await super().close()


class PrefillLogits:
    """The step graph as the next-word batcher runs it: logits only (B, T, V)."""

    def __init__(self, model: LanguageModel) -> None:
        self.graph = model.graphs["step"]
        self.decoder = model.decoder
        self.names = [model.decoder.model.logits]

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Stacked prompts (their batch axis first) from a fresh state: the state's batch axis
        differs between families, so it is made here for the whole batch, not stacked."""
        batch = len(feeds[self.decoder.model.input_ids])
        return self.graph.run({**feeds, **self.decoder.fresh_state_feeds(batch)}, self.names)
