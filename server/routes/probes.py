"""Probes and facts: /health (liveness), /ready (readiness), /metrics (Prometheus), /version."""

from __future__ import annotations

from importlib import metadata

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from server.state import State

router = APIRouter()


@router.get("/health")
async def health(state: State) -> Response:
    lifecycle = state.lifecycle
    if lifecycle.is_live():
        return JSONResponse({"status": "ok", "phase": lifecycle.phase.value})
    return JSONResponse({"status": "unhealthy", "phase": lifecycle.phase.value}, status_code=503)


@router.get("/ready")
async def ready(state: State) -> Response:
    reason = state.lifecycle.not_ready_reason()
    if reason is None:
        return JSONResponse({"status": "ready"})
    return JSONResponse({"status": "not ready", "reason": reason}, status_code=503, headers={"Retry-After": "5"})


@router.get("/metrics")
async def prometheus(state: State) -> Response:
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/version")
async def version(state: State) -> Response:
    rt = state.runtime
    return JSONResponse({
        "version": metadata.version("llava-serve"),
        "model": state.config.served_model_name,
        "dtype": str(rt.loaded.dtype).removeprefix("torch.") if rt else None,
        "dtype_reason": rt.loaded.dtype_reason if rt else None,
        "device": rt.loaded.device_kind if rt else None,
        "quantization": rt.loaded.quantization if rt else None,
        "is_demo": rt.loaded.is_demo if rt else None,
        "phase": state.lifecycle.phase.value,
    })
