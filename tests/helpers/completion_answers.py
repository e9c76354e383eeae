"""Reading `/v1/completions` answers in tests: server-sent events, a streamed choice put back
together, and the contract every choice's `logprobs` keeps (vLLM's)."""

from __future__ import annotations

import json
import re
from typing import Any


def events(text: str) -> list[Any]:
    """The data of every server-sent event ("[DONE]" stays a string)."""
    found = re.findall(r"^data: (.*)$", text, flags=re.M)
    return [d if d == "[DONE]" else json.loads(d) for d in found]


def merged_choice(chunks: list[Any], index: int = 0) -> dict[str, Any]:
    """Choice `index` of a stream, its chunks joined as the plain answer would have it."""
    text, reason, logprobs = "", None, None
    for chunk in chunks:
        for choice in chunk.get("choices", []) if isinstance(chunk, dict) else []:
            if choice["index"] != index:
                continue
            text += choice["text"]
            reason = choice["finish_reason"] or reason
            if choice["logprobs"] is not None:
                logprobs = logprobs or {key: [] for key in choice["logprobs"]}
                for key, values in choice["logprobs"].items():
                    logprobs[key] += values
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": reason}


def check_logprobs(choice: dict[str, Any], k: int) -> None:
    """Every token sits at its `text_offset` in the choice's text, and a scored token comes with
    the k most likely tokens at its position and itself (k or k + 1 entries)."""
    text, logprobs = choice["text"], choice["logprobs"]
    tokens = logprobs["tokens"]
    assert len(logprobs["text_offset"]) == len(logprobs["token_logprobs"]) == len(tokens)
    assert len(logprobs["top_logprobs"]) == len(tokens)
    for offset, token in zip(logprobs["text_offset"], tokens, strict=True):
        assert text[offset:].startswith(token), f"{token!r} is not at {offset} in {text!r}"
    assert logprobs["text_offset"] == sorted(logprobs["text_offset"])
    scores = zip(tokens, logprobs["token_logprobs"], logprobs["top_logprobs"], strict=True)
    for token, value, top in scores:
        if value is None:  # before the graph's window
            assert top is None
            continue
        assert value <= 0 and top is not None and top[token] == value, (token, value, top)
        assert k <= len(top) <= k + 1 and all(v <= 0 for v in top.values()), top
