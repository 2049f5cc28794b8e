"""Pydantic models of the OpenAI chat-completions request and response (spec serving.md section 2).

Unknown fields are ignored; known fields with bad values fail validation (400 with `param`);
OpenAI fields we do not implement are kept as `Any` so structured.py can refuse them by name.
Extensions as in vLLM: `top_k`, `min_p`, `repetition_penalty`, `ignore_eos`, `guided_json`,
`guided_regex`, `guided_choice` in requests; `media` (one report per media item) and
`usage.prompt_tokens_details` per modality in responses.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer, model_validator

from model_runtime import MAX_TOP_LOGPROBS

MAX_STOP_STRINGS = 16


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ImageURL(_Lenient):
    url: str
    detail: Literal["auto", "low", "high"] | None = None  # low: the base view only; else the checkpoint's way


class VideoURL(_Lenient):
    url: str
    num_frames: int | None = Field(default=None, ge=1)  # clamped to the server's ceiling
    fps: float | None = Field(default=None, gt=0, le=240)
    use_audio: bool = False  # also feed the video's own audio track to the audio tower


class InputAudio(_Lenient):
    data: str  # base64
    format: Literal["wav", "mp3", "flac", "ogg"]


class AudioURL(_Lenient):
    url: str


class ContentPart(_Lenient):
    type: str
    text: str | None = None
    image_url: ImageURL | None = None
    video_url: VideoURL | None = None
    input_audio: InputAudio | None = None
    audio_url: AudioURL | None = None

    @field_validator("image_url", "audio_url", mode="before")
    @classmethod
    def _url_string(cls, value: Any) -> Any:
        return {"url": value} if isinstance(value, str) else value  # the older string shorthand

    @field_validator("video_url", mode="before")
    @classmethod
    def _video_url_string(cls, value: Any) -> Any:
        return {"url": value} if isinstance(value, str) else value


class FunctionCall(_Lenient):
    name: str
    arguments: str  # JSON text, as OpenAI sends it


class ToolCall(_Lenient):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Lenient):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[ContentPart] | None = None
    tool_calls: list[ToolCall] | None = None  # assistant messages: the calls it made
    tool_call_id: str | None = None  # tool messages: the call this answers
    name: str | None = None


class FunctionDefinition(_Lenient):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON schema of the arguments object
    strict: bool | None = None


class Tool(_Lenient):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Lenient):
    name: str


class NamedToolChoice(_Lenient):
    type: Literal["function"]
    function: NamedFunction


class JSONSchemaFormat(_Lenient):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    json_schema: dict[str, Any] | bool | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Lenient):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_needs_its_object(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type json_schema needs `json_schema`")
        return self


class StreamOptions(_Lenient):
    include_usage: bool = False


class GenerationParams(_Lenient):
    """The sampling fields every generating API shares (chat, completions; the other APIs map onto them)."""

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=-1)
    min_p: float = Field(default=0.0, ge=0.0, le=1.0)
    n: int = Field(default=1, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), le=2**64 - 1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    repetition_penalty: float = Field(default=1.0, gt=0.0, le=10.0)
    ignore_eos: bool = False
    user: str | None = None
    logit_bias: dict[str, float] | None = None  # token id (as a string) -> bias in [-100, 100]

    @field_validator("temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty",
                     "repetition_penalty", mode="before")
    @classmethod
    def _null_is_default(cls, value: Any, info) -> Any:
        return cls.model_fields[info.field_name].default if value is None else value

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, value: str | list[str] | None) -> list[str]:
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings")
        if any(not s for s in stops):
            raise ValueError("stop strings must not be empty")
        return stops


class ChatCompletionRequest(GenerationParams):
    """The chat request, and the one internal request every API's adapter builds (server/pipeline.py)."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    guided_json: dict[str, Any] | str | None = None  # extension (vLLM): a JSON schema
    guided_regex: str | None = None  # extension (vLLM)
    guided_choice: list[str] | None = None  # extension (vLLM)
    # OpenAI fields llava-serve does not implement: refused by name unless null or OpenAI's default
    audio: Any = None
    functions: Any = None
    function_call: Any = None
    metadata: Any = None
    modalities: Any = None
    prediction: Any = None
    reasoning_effort: Any = None
    service_tier: Any = None
    store: Any = None
    verbosity: Any = None
    web_search_options: Any = None

    @model_validator(mode="after")
    def _top_logprobs_needs_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs=true")
        return self

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class PromptTokensDetails(BaseModel):
    text_tokens: int = 0
    image_tokens: int = 0
    video_tokens: int = 0
    audio_tokens: int = 0
    cached_tokens: int = 0


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCallOut] | None = None


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: str | None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[Choice]
    usage: Usage
    media: list[dict[str, Any]] = Field(default_factory=list)  # extension: one report per media item


class _WithoutNulls(BaseModel):
    """Leaves unset fields out, as OpenAI's stream does (clients merge deltas key by key)."""

    @model_serializer(mode="wrap")
    def _drop_nulls(self, handler):
        return {k: v for k, v in handler(self).items() if v is not None}


class FunctionCallDelta(_WithoutNulls):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(_WithoutNulls):
    index: int  # the call's place in the choice's tool_calls
    id: str | None = None  # on the call's first delta, with type and name
    type: Literal["function"] | None = None
    function: FunctionCallDelta


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: Delta
    finish_reason: str | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    media: list[dict[str, Any]] | None = None  # extension: on the last chunk before [DONE]


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "llava-serve"
    max_model_len: int
    modalities: list[str]
    description: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
