"""llava-serve's model runtime: LLaVA models on transformers, preprocessing, checkpoints, engine.

Knows torch and transformers; knows nothing of HTTP. `server/` imports only the names below.
"""

from model_runtime.arch.layout import LayoutError, audio_token_count, image_token_count
from model_runtime.arch.meta import MediaMismatchError
from model_runtime.checkpoint.demo import DEMO_SPECS, make_demo
from model_runtime.checkpoint.loader import LoadedModel, load_pretrained_model
from model_runtime.config import AudioTowerConfig, ConfigError, EngineConfig, LlavaConfig
from model_runtime.constants import AUDIO_SAMPLE_RATE
from model_runtime.engine.engine import Engine, EngineStats
from model_runtime.engine.request import FINISH_REASONS, Request, RequestOutput, RequestStatus, SamplingParams
from model_runtime.engine.worker import EngineDeadError, EngineWorker
from model_runtime.inputs import EncodedItem, MediaInput
from model_runtime.processing.conversation import ChatTurn
from model_runtime.processing.processor import InvalidMediaError, InvalidPromptError, Processor, PromptInput
from model_runtime.processing.video import FramePlan, plan_video_frames

__all__ = [
    "AUDIO_SAMPLE_RATE",
    "AudioTowerConfig",
    "DEMO_SPECS",
    "FINISH_REASONS",
    "FramePlan",
    "ChatTurn",
    "ConfigError",
    "Engine",
    "EncodedItem",
    "EngineConfig",
    "EngineDeadError",
    "EngineStats",
    "EngineWorker",
    "InvalidMediaError",
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
    "audio_token_count",
    "image_token_count",
    "load_pretrained_model",
    "make_demo",
    "plan_video_frames",
]
