"""What serving loads from a checkpoint folder: `loader.load_pretrained_model` and its parts.

Folder resolution and kind (folder), llava-hf layout reading (hf_layout), a LoRA adapter merged
at load (lora), bitsandbytes quantization (quantize), safetensors reading (safetensors_io),
tensors into a model (tensors), added tokens (tokens), a vision tower from another checkpoint
(tower_source). Nothing here writes a checkpoint or imports `model_runtime.checkpoint_tools`.
"""
