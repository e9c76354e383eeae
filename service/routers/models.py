"""`GET /v1/models`: every model with its task, versions, card and status (OpenAI list shape)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter

from service.auth import InferenceAuth
from service.deps import RegistryDep
from service.errors import ModelNotFound
from service.modelconfig import ModelConfig
from service.pbtxt import triton_config_dict
from service.protocol.types import ErrorResponse, ModelCardSummary, ModelList
from service.registry import ModelState

router = APIRouter(prefix="/v1/models", tags=["models"], dependencies=[InferenceAuth])

# Card metrics worth showing in a listing; the full card is at /v1/models/{name}.
HEADLINE = ("test_accuracy", "test_perplexity", "class_consistency", "fcd")


def summary(state: ModelState) -> ModelCardSummary:
    newest = state.versions[max(state.versions)] if state.versions else None
    card: dict[str, Any] = (newest.card or {}) if newest else {}
    config = newest.config if newest else None
    created = card.get("created")
    return ModelCardSummary(
        id=state.name,
        created=_epoch(created),
        task=config.task if config else None,
        family=config.family if config else None,
        dataset=config.dataset if config else None,
        versions=[str(v) for v in sorted(state.versions)],
        ready=state.ready,
        reason=state.reason,
        provider=newest.provider if newest else None,
        metrics={k: v for k, v in (card.get("metrics") or {}).items() if k in HEADLINE},
    )


def _config(config: ModelConfig) -> dict[str, Any]:
    """config.json as written, or the completed config in Triton's form for other models."""
    return config.raw or triton_config_dict(config)


def _epoch(created: Any) -> int:
    try:
        return int(dt.datetime.fromisoformat(str(created)).timestamp())
    except ValueError:
        return 0


@router.get("", response_model=ModelList)
async def list_models(registry: RegistryDep) -> ModelList:
    """Every model in the repository, ready or not."""
    return ModelList(data=[summary(registry.models[name]) for name in sorted(registry.models)])


@router.get("/{model_name}", responses={404: {"model": ErrorResponse}})
async def model_card(registry: RegistryDep, model_name: str) -> dict[str, Any]:
    """One model: its status, config and the full card of each loaded version."""
    state = registry.models.get(model_name)
    if state is None:
        raise ModelNotFound(f"model {model_name!r} not found")
    return {
        **summary(state).model_dump(),
        "config": _config(state.versions[max(state.versions)].config) if state.versions else None,
        "cards": {str(v): m.card for v, m in sorted(state.versions.items())},
    }
