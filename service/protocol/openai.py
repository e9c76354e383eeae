"""OpenAI completions API as vLLM implements it (`vllm/entrypoints/openai/protocol.py`):
request, response, streamed chunk and error shapes. Logic-free."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from service.protocol.types import MAX_SEED

Stop = str | list[str]
FinishReason = Literal["stop", "length"]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool | None = Field(False, description="One last chunk with the usage.")
    continuous_usage_stats: bool | None = Field(
        False, description="vLLM: the usage so far in every chunk."
    )


class CompletionRequest(BaseModel):
    """`POST /v1/completions`. Parameters OpenAI has but a word-level model cannot honour are
    accepted only at their neutral value, so nothing a client asks for is silently ignored."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="A language model, e.g. `lstm-austen`.")
    prompt: str | list[str] = Field(description="A text, or several (each gets `n` completions).")
    max_tokens: int | None = Field(16, ge=0, description="Tokens to write per completion.")
    temperature: float | None = Field(None, ge=0, le=100, description="0 = greedy (default 1).")
    top_p: float | None = Field(None, gt=0, le=1, description="Nucleus sampling (1 = off).")
    top_k: int | None = Field(None, ge=-1, description="vLLM: keep the k most likely; -1/0 = off.")
    n: int | None = Field(1, ge=1, description="Completions per prompt.")
    stop: Stop | None = Field(None, description="Text that ends a completion (not included).")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="Same seed, same completions.")
    logprobs: int | None = Field(None, ge=0, description="Alternatives per token to report.")
    echo: bool | None = Field(False, description="Put the prompt in front of the completion.")
    stream: bool | None = Field(False, description="Server-sent events, ending `data: [DONE]`.")
    stream_options: StreamOptions | None = None
    repetition_penalty: float | None = Field(
        None, gt=0, le=10, description="vLLM: > 1 discourages repeating (CTRL's penalty)."
    )
    presence_penalty: float | None = Field(0.0, ge=-2, le=2, description="Only 0 is supported.")
    frequency_penalty: float | None = Field(0.0, ge=-2, le=2, description="Only 0 is supported.")
    best_of: int | None = Field(None, ge=1, description="Only equal to `n` is supported.")
    logit_bias: dict[str, float] | None = Field(None, description="Only empty is supported.")
    suffix: str | None = Field(None, description="Not supported (must be absent).")
    user: str | None = Field(None, description="Accepted for compatibility; unused.")


class CompletionLogprobs(BaseModel):
    text_offset: list[int] = Field(description="Where each token starts in `text`.")
    token_logprobs: list[float | None]
    tokens: list[str]
    top_logprobs: list[dict[str, float] | None] = Field(
        description="The most likely tokens at each position (and the one chosen)."
    )


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: FinishReason | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class OpenAIError(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: int | None = None


class OpenAIErrorResponse(BaseModel):
    error: OpenAIError
