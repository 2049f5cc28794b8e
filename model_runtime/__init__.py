"""llava-serve's model runtime: LLaVA models on transformers, preprocessing, checkpoint loading, engine.

Knows torch and transformers; knows nothing of HTTP. The server imports only the names below to
serve. The offline checkpoint tools (convert, deltas, demos, upgrades, merge-lora, export-hf)
are a package of their own, `model_runtime.checkpoint_tools`, which imports this side and is
never imported by it (tests/test_import_graph.py).
"""

from model_runtime.arch.layout import ImageTokenParts, LayoutError, audio_token_count, image_token_count
from model_runtime.arch.segments import MediaMismatchError
from model_runtime.checkpoint.hf_layout import HF_BEHAVIOURS
from model_runtime.checkpoint.loader import LoadedModel, load_pretrained_model
from model_runtime.checkpoint.quantize import QUANTIZATIONS
from model_runtime.config import AudioTowerConfig, ConfigError, EngineConfig, LlavaConfig
from model_runtime.config.engine import (
    GPU_STEP_TOKENS,
    IDLE_STEP_FACTOR,
    KV_AUTO_CPU_BYTES,
    KV_AUTO_CUDA_SHARE,
)
from model_runtime.constants import AUDIO_SAMPLE_RATE, PLACEHOLDER_BY_MODALITY
from model_runtime.engine.engine import Engine, EngineDeadError
from model_runtime.engine.grammar import CompiledGrammar, GrammarCompiler, GrammarError, GrammarSpec
from model_runtime.engine.request import (
    FINISH_REASONS,
    MAX_TOP_LOGPROBS,
    Logprob,
    Priority,
    Request,
    RequestMetrics,
    RequestOutput,
    RequestStatus,
    SamplingParams,
    SamplingParamsError,
    TokenLogprobs,
)
from model_runtime.engine.stats import STEP_TOKEN_BOUNDS, EngineStats
from model_runtime.engine.worker import EngineDrainingError, EngineWorker, WorkerHealth
from model_runtime.errors import RequestInputError
from model_runtime.inputs import EncodedItem, MediaInput
from model_runtime.processing.conversation import ChatTurn, ToolCall
from model_runtime.processing.processor import (
    DEFAULT_MAX_FRAMES,
    InvalidMediaError,
    InvalidPromptError,
    Processor,
    PromptInput,
)
from model_runtime.processing.tool_prompt import CALL_CLOSE, CALL_OPEN, CALL_SEPARATOR, format_call
from model_runtime.processing.video import FramePlan, plan_video_frames

__all__ = [
    "AUDIO_SAMPLE_RATE",
    "AudioTowerConfig",
    "CALL_CLOSE",
    "CALL_OPEN",
    "CALL_SEPARATOR",
    "CompiledGrammar",
    "DEFAULT_MAX_FRAMES",
    "FINISH_REASONS",
    "FramePlan",
    "GrammarCompiler",
    "GrammarError",
    "GPU_STEP_TOKENS",
    "GrammarSpec",
    "HF_BEHAVIOURS",
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
    "IDLE_STEP_FACTOR",
    "ImageTokenParts",
    "InvalidMediaError",
    "InvalidPromptError",
    "KV_AUTO_CPU_BYTES",
    "KV_AUTO_CUDA_SHARE",
    "LayoutError",
    "LlavaConfig",
    "LoadedModel",
    "Logprob",
    "MediaInput",
    "MediaMismatchError",
    "Priority",
    "PLACEHOLDER_BY_MODALITY",
    "Processor",
    "PromptInput",
    "QUANTIZATIONS",
    "STEP_TOKEN_BOUNDS",
    "Request",
    "RequestInputError",
    "RequestMetrics",
    "RequestOutput",
    "RequestStatus",
    "SamplingParams",
    "SamplingParamsError",
    "TokenLogprobs",
    "ToolCall",
    "WorkerHealth",
    "format_call",
    "audio_token_count",
    "image_token_count",
    "load_pretrained_model",
    "plan_video_frames",
]
