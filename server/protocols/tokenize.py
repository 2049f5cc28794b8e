"""POST /tokenize and POST /detokenize in vLLM's shapes.

`prompt` is tokenised as it stands; `messages` is rendered as chat renders it (tools and media
included), so `count` is exactly the `prompt_tokens` the same chat request is charged. A media
item is one negative sentinel id in `tokens` (-200 image or video, -300 audio) and fills as many
positions as its report's `tokens` says (`media`, one report per item).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, model_validator

from server.errors import InvalidRequest
from server.protocol import ChatCompletionRequest, ChatMessage, Tool, _Lenient


class TokenizeRequest(_Lenient):
    model: str | None = None  # vLLM's clients may leave it out: the served model
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool | None = None  # prompt: true (the tokenizer's BOS); messages: false, as vLLM
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    return_token_strs: bool = False
    tools: list[Tool] | None = None

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of `prompt` and `messages`")
        return self

    def internal(self, served_model: str) -> ChatCompletionRequest:
        if not self.add_generation_prompt:
            raise InvalidRequest("add_generation_prompt=false is not supported: the prompt always ends where the "
                                 "answer starts", param="add_generation_prompt")
        if self.continue_final_message:
            raise InvalidRequest("continue_final_message is not supported", param="continue_final_message")
        if self.messages is not None and self.add_special_tokens:
            raise InvalidRequest("add_special_tokens applies to `prompt` only (the template writes its own)",
                                 param="add_special_tokens")
        messages = self.messages or [ChatMessage(role="user", content="")]
        return ChatCompletionRequest(model=self.model or served_model, messages=messages, tools=self.tools)


class TokenizeResponse(BaseModel):
    count: int  # prompt positions, media rows included
    max_model_len: int
    tokens: list[int]  # ids, with one sentinel per media item
    token_strs: list[str] | None = None
    media: list[dict[str, Any]] = Field(default_factory=list)  # extension: one report per media item


class DetokenizeRequest(_Lenient):
    model: str | None = None
    tokens: list[int] = Field(min_length=1)


class DetokenizeResponse(BaseModel):
    prompt: str
