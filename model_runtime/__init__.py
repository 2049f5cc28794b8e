"""llava-serve's model runtime: LLaVA models on transformers, preprocessing, checkpoints, engine.

Knows torch and transformers; knows nothing of HTTP. `server/` imports only the names below.
"""

from model_runtime.arch.layout import LayoutError, image_token_count
from model_runtime.arch.meta import MediaMismatchError
from model_runtime.checkpoint.demo import DEMO_SPECS, make_demo
from model_runtime.checkpoint.loader import LoadedModel, load_pretrained_model
from model_runtime.config import ConfigError, EngineConfig, FaultInjection, LlavaConfig
from model_runtime.engine.engine import Engine, EngineDeadError, EngineStats
from model_runtime.engine.request import (
    FINISH_REASONS,
    MAX_TOP_LOGPROBS,
    Logprob,
    Request,
    RequestMetrics,
    RequestOutput,
    RequestStatus,
    SamplingParams,
    SamplingParamsError,
    TokenLogprobs,
)
from model_runtime.engine.worker import EngineDrainingError, EngineWorker, WorkerHealth
from model_runtime.inputs import EncodedItem, MediaInput
from model_runtime.processing.conversation import ChatTurn
from model_runtime.processing.processor import InvalidPromptError, Processor, PromptInput

__all__ = [
    "DEMO_SPECS",
    "FINISH_REASONS",
    "MAX_TOP_LOGPROBS",
    "ChatTurn",
    "ConfigError",
    "Engine",
    "EncodedItem",
    "EngineConfig",
    "EngineDeadError",
    "EngineDrainingError",
    "EngineStats",
    "EngineWorker",
    "FaultInjection",
    "InvalidPromptError",
    "LayoutError",
    "LlavaConfig",
    "LoadedModel",
    "Logprob",
    "MediaInput",
    "MediaMismatchError",
    "Processor",
    "PromptInput",
    "Request",
    "RequestMetrics",
    "RequestOutput",
    "RequestStatus",
    "SamplingParams",
    "SamplingParamsError",
    "TokenLogprobs",
    "WorkerHealth",
    "image_token_count",
    "load_pretrained_model",
    "make_demo",
]
