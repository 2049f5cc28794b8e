"""POST /v1/completions: the completions adapter (server/protocols/completions.py) onto the pipeline."""

from __future__ import annotations

import asyncio
import json

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from server import pipeline
from server.errors import APIError, InvalidRequest
from server.protocols.completions import CompletionAdapter, CompletionRequest, merge
from server.state import State

router = APIRouter()


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request, state: State) -> Response:
    internal = body.internal()
    prompts = body.prompts()
    if len(prompts) > 1 and body.stream:
        raise InvalidRequest("a streamed completion takes one prompt", param="prompt")
    rt = state.serving_runtime()
    tokenizer = rt.loaded.processor.tokenizer

    def adapter(prompt: str | list[int]) -> CompletionAdapter:
        if not body.echo:
            return CompletionAdapter(body, "")
        if isinstance(prompt, str):
            return CompletionAdapter(body, prompt)
        # ids outside the vocabulary are decoded by nobody: the pipeline refuses them (400, param prompt)
        valid = all(0 <= i < rt.worker.engine.vocab_size for i in prompt)
        return CompletionAdapter(body, tokenizer.decode(prompt) if valid else "")

    if len(prompts) == 1:
        return await pipeline.run(state, adapter(prompts[0]), internal, request, raw_prompt=prompts[0])
    try:
        async with asyncio.TaskGroup() as group:  # the first failure cancels the rest and is the answer
            tasks = [group.create_task(pipeline.run(state, adapter(p), internal, request, raw_prompt=p))
                     for p in prompts]
    except* APIError as errors:
        raise errors.exceptions[0] from None
    answers = [task.result() for task in tasks]
    if any(a.status_code != 200 for a in answers):
        return next(a for a in answers if a.status_code != 200)
    return JSONResponse(merge([json.loads(bytes(a.body)) for a in answers]))
