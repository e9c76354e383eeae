"""Response shapes for the OpenAPI schema. Logic-free: routers fill them, clients read them."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

# Largest accepted seed: 2**53 - 1 survives every JSON parser (JavaScript numbers included).
MAX_SEED = 2**53 - 1


# The protocol extensions this server supports (REST GET /v2, gRPC ServerMetadata).
EXTENSIONS = [
    "binary_tensor_data", "model_configuration", "classification", "statistics", "generate",
    "model_repository",
]  # fmt: skip


class ErrorResponse(BaseModel):
    error: str = Field(description="What was wrong, naming the field at fault where there is one.")


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: dict[str, Any] = Field(default_factory=dict)


class Prediction(BaseModel):
    label: str
    index: int
    probability: float


class Timing(BaseModel):
    preprocess_ms: float
    inference_ms: float
    total_ms: float


class OodCheck(BaseModel):
    """Whether one picture looks like the classifier's training pictures."""

    score: float = Field(
        description="Out-of-distribution score of the logits (config.json's ood.score, e.g. "
        "energy = -logsumexp(logits)); higher = less like the training pictures."
    )
    threshold: float = Field(
        description="Scores above it are out of distribution (95% of held-out training "
        "pictures score at or below it)."
    )
    in_distribution: bool = Field(description="score <= threshold.")


class ClassifyResponse(BaseModel):
    model_name: str
    model_version: str
    predictions: list[list[Prediction]] = Field(description="One top-k list per image, in order.")
    ood: list[OodCheck] | None = Field(
        None,
        description="One out-of-distribution check per image, in order; null for a model "
        "without a fitted `ood` section in its config.json.",
    )
    timing: Timing


class ModelCardSummary(BaseModel):
    id: str
    object: str = "model"
    created: int
    owned_by: str = "seedserve"
    task: str | None
    family: str | None
    dataset: str | None
    versions: list[str]
    ready: bool
    reason: str | None = None
    provider: str | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelCardSummary]


class RepositoryModel(BaseModel):
    name: str
    version: str | None = None
    state: str = Field(description="READY or UNAVAILABLE.")
    reason: str | None = None


class ModelFileList(BaseModel):
    model_name: str
    model_version: str
    files: list[str] = Field(
        description="The version's .md and .png files (card.md, curves.png...)."
    )
