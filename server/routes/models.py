"""/v1/models and /v1/models/{id}: the one served model, once it serves (503 before)."""

from __future__ import annotations

from fastapi import APIRouter

from server.errors import ModelNotFound
from server.protocol import ModelCard, ModelList
from server.state import Runtime, State

router = APIRouter()


@router.get("/v1/models")
async def models(state: State) -> ModelList:
    return ModelList(data=[model_card(state.serving_runtime(), state.config.served_model_name)])


@router.get("/v1/models/{model_id:path}")
async def model(model_id: str, state: State) -> ModelCard:
    rt = state.serving_runtime()
    if model_id != state.config.served_model_name:
        raise ModelNotFound(f"model {model_id!r} is not served here", param="model")
    return model_card(rt, model_id)


def model_card(rt: Runtime, name: str) -> ModelCard:
    note = "RANDOM demo weights: generated text is meaningless" if rt.loaded.is_demo else "LLaVA checkpoint"
    return ModelCard(id=name, created=rt.started, max_model_len=rt.context_len,
                     modalities=["text", *sorted(rt.loaded.processor.modalities)], description=note)
