"""Next-word prediction and the Open Inference Protocol generate extension
(kserve/open-inference-protocol `specification/protocol/generate_rest.yaml`). Logic-free."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from service.protocol.types import MAX_SEED


class NextWordRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field("", description="The text so far; empty = the start of a paragraph.")
    top_k: int = Field(10, ge=1, description="How many words to return.")


class WordPrediction(BaseModel):
    word: str = Field(description='A vocabulary word; "\\n" is the paragraph break.')
    token_id: int
    probability: float
    logprob: float


class NextWordResponse(BaseModel):
    model_name: str
    model_version: str
    predictions: list[WordPrediction] = Field(description="Most likely first.")
    tokens: int = Field(description="Tokens the text was read as.")
    unknown_words: list[str] = Field(description="Words of the text outside the vocabulary.")


class GenerateParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_tokens: int | None = Field(20, ge=0, description="Tokens to write.")
    temperature: float | None = Field(None, ge=0, le=100, description="0 = greedy (default 1).")
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1, description="-1/0 = off.")
    repetition_penalty: float | None = Field(None, gt=0, le=10)
    stop: str | list[str] | None = Field(None, description="Text that ends generation.")
    seed: int | None = Field(None, ge=0, le=MAX_SEED)


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(None, max_length=256, description="Echoed back.")
    text_input: str
    parameters: GenerateParameters | None = None


class GenerateResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    text_output: str
    finish_reason: Literal["stop", "length"]


class GenerateStreamResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    text_output: str = Field(description="The text added since the previous event.")
    done: bool
    finish_reason: Literal["stop", "length"] | None = None
