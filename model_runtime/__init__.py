"""llava-serve's model runtime: LLaVA models on transformers, preprocessing, checkpoints, engine.

Knows torch and transformers; knows nothing of HTTP. `server/` imports only the names below.
"""

from model_runtime.arch.layout import LayoutError, image_token_count
from model_runtime.arch.meta import MediaMismatchError
from model_runtime.checkpoint.demo import DEMO_SPECS, make_demo
from model_runtime.checkpoint.loader import LoadedModel, load_pretrained_model
from model_runtime.config import ConfigError, EngineConfig, LlavaConfig
from model_runtime.engine.engine import Engine, EngineStats
from model_runtime.engine.request import FINISH_REASONS, Request, RequestOutput, RequestStatus, SamplingParams
from model_runtime.engine.worker import EngineDeadError, EngineWorker
from model_runtime.inputs import EncodedItem, MediaInput
from model_runtime.processing.conversation import ChatTurn
from model_runtime.processing.processor import InvalidPromptError, Processor, PromptInput

__all__ = [
    "DEMO_SPECS",
    "FINISH_REASONS",
    "ChatTurn",
    "ConfigError",
    "Engine",
    "EncodedItem",
    "EngineConfig",
    "EngineDeadError",
    "EngineStats",
    "EngineWorker",
    "InvalidPromptError",
    "LayoutError",
    "LlavaConfig",
    "LoadedModel",
    "MediaInput",
    "MediaMismatchError",
    "Processor",
    "PromptInput",
    "Request",
    "RequestOutput",
    "RequestStatus",
    "SamplingParams",
    "image_token_count",
    "load_pretrained_model",
    "make_demo",
]
