"""Next-word prompts of concurrent requests are read in one step-graph call (right-padded to a
bucket of tokens), and every shipped family gives the words it gives reading the prompt alone."""

from __future__ import annotations

import asyncio

import pytest
from helpers.shipped_models import AUSTEN_LMS, copy_models

from service.dataplane import DataPlane
from service.metrics import Metrics
from service.registry import Registry
from service.repository import Repository
from service.settings import Settings
from service.tasks.generation_jobs import PREFILL_BUCKET, language_model, next_words

SHIPPED = AUSTEN_LMS
TEXTS = [
    "It is a truth universally acknowledged, that",  # 10 tokens with the start token
    "My dear Mr. Bennet,",  # 7 tokens
    "She was",  # 3 tokens: the same bucket as the one before
    "Emma Woodhouse, handsome, clever, and rich, with a comfortable home and happy "
    "disposition, seemed to unite some of the best blessings of existence;",  # the next bucket
    " ".join(["and she said that he was very happy ;"] * 20),  # past the Transformer's window
]


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Registry, Metrics, Settings]:
    if not SHIPPED:
        pytest.skip("no Austen language model is shipped")
    root = copy_models(SHIPPED, tmp_path_factory.mktemp("next-word") / "models")
    settings = Settings(models_dir=root, access_log=False)
    metrics = Metrics()
    registry = Registry(Repository(root), settings, metrics)
    registry.load_all_quietly()
    return registry, metrics, settings


@pytest.mark.parametrize("name", SHIPPED or ["none"])
def test_concurrent_prompts_share_a_call_and_match_reading_alone(
    loaded: tuple[Registry, Metrics, Settings], name: str
) -> None:
    registry, metrics, settings = loaded
    dataplane = DataPlane(registry, metrics, settings)
    model = language_model(registry, name)
    decoder = model.decoder
    labels = {"model": name, "version": str(model.version)}

    async def ask() -> list[list[tuple[int, float]]]:
        try:
            answers = await asyncio.gather(*(next_words(dataplane, model, t, 5) for t in TEXTS))
        finally:
            await model.close()  # its batchers are bound to this test's event loop
        return [[(w.token_id, w.probability) for w in words] for words in answers]

    before = metrics.registry.get_sample_value("seedserve_inference_batch_size_count", labels)
    got = asyncio.run(ask())
    calls = metrics.registry.get_sample_value("seedserve_inference_batch_size_count", labels)
    for text, words in zip(TEXTS, got, strict=True):
        alone = decoder.next_word_distribution(text, 5)
        assert [i for i, _ in words] == [w.token_id for w in alone], (name, text)
        for (_, p), w in zip(words, alone, strict=True):
            assert abs(p - w.probability) < 1e-4, (name, text, p, w.probability)
    limit = decoder.model.max_length or 10**9
    widths = {min(-(-len(decoder.prompt_window(t)) // PREFILL_BUCKET) * PREFILL_BUCKET, limit)
              for t in TEXTS[1:]}  # fmt: skip
    # the first finds the batcher idle and nothing else in flight: read at its own width
    widths.add(min(len(decoder.prompt_window(TEXTS[0])), limit))
    assert calls is not None and calls - (before or 0) == len(widths) < len(TEXTS)


def test_padding_is_refused_where_a_graph_cannot_read_it(
    loaded: tuple[Registry, Metrics, Settings],
) -> None:
    registry, _, _ = loaded
    decoder = language_model(registry, SHIPPED[0]).decoder
    ids = decoder.prompt_window("She was")
    assert decoder.padded_prefill(ids, len(ids) - 1) is None  # narrower than the prompt
    assert decoder.padded_prefill([], 16) is None
    feeds = decoder.padded_prefill(ids, 16)
    assert feeds is not None and feeds[decoder.model.input_ids].shape == (1, 16)
    assert list(feeds[decoder.model.input_ids][0, : len(ids)]) == ids
