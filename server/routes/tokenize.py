"""POST /tokenize and POST /detokenize (server/protocols/tokenize.py), counted by the pipeline's own prompt."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from server import pipeline
from server.errors import InvalidRequest
from server.protocols.tokenize import DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse
from server.state import State

router = APIRouter()


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, request: Request, state: State) -> Response:
    internal = body.internal(state.config.served_model_name)
    raw = None
    if body.prompt is not None:
        tokenizer = state.serving_runtime().loaded.processor.tokenizer
        raw = list(tokenizer(body.prompt, add_special_tokens=body.add_special_tokens is not False).input_ids)
        if not raw:
            return JSONResponse(TokenizeResponse(count=0, max_model_len=state.serving_runtime().context_len,
                                                 tokens=[]).model_dump())
    try:
        counted = await pipeline.count_prompt(state, internal, request, raw_prompt=raw)
    except pipeline.ClientGone:
        return Response(status_code=499)
    ids = counted.prompt.token_ids
    strs = None
    if body.return_token_strs:
        tokenizer = state.serving_runtime().loaded.processor.tokenizer
        strs = [tokenizer.convert_ids_to_tokens(i) if i >= 0 else "<media>" for i in ids]
    return JSONResponse(TokenizeResponse(count=counted.prompt.num_tokens, max_model_len=counted.context_len,
                                         tokens=ids, token_strs=strs,
                                         media=[r.to_json() for r in counted.media.reports]).model_dump())


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, state: State) -> DetokenizeResponse:
    rt = state.serving_runtime()
    pipeline.check_model(state.config, body.model or state.config.served_model_name)
    vocab_size = rt.worker.engine.vocab_size
    bad = next((i for i in body.tokens if not 0 <= i < vocab_size), None)
    if bad is not None:
        raise InvalidRequest(f"token id {bad} is not in this model's vocabulary (0..{vocab_size - 1})", param="tokens")
    return DetokenizeResponse(prompt=rt.loaded.processor.tokenizer.decode(body.tokens))
