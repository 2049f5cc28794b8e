"""Offline checkpoint tools: each builds a new checkpoint folder on disk; none is used to serve.

convert-bin (convert), make-delta/apply-delta (delta), demo checkpoints (demo), export-hf
(hf_export), upgrade (upgrade), merge-lora (merge_lora), and the sharded safetensors writer they
share (safetensors_write). They load and read through `model_runtime.checkpoint` (the serving
side); that side never imports this package. `llava-serve`'s checkpoint subcommands and the
tests import the names below.
"""

from model_runtime.checkpoint_tools.convert import convert_bin
from model_runtime.checkpoint_tools.delta import apply_delta, make_delta
from model_runtime.checkpoint_tools.demo import DEMO_SPECS, make_demo
from model_runtime.checkpoint_tools.hf_export import export_hf
from model_runtime.checkpoint_tools.merge_lora import merge_lora
from model_runtime.checkpoint_tools.upgrade import upgrade_checkpoint

__all__ = [
    "DEMO_SPECS",
    "apply_delta",
    "convert_bin",
    "export_hf",
    "make_delta",
    "make_demo",
    "merge_lora",
    "upgrade_checkpoint",
]
