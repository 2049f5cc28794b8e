"""`llava-serve export-hf`: an ORIG-layout checkpoint written in the llava-hf layout, the reverse of
hf_layout.py, so the same weights run in transformers, `transformers serve` or another server:
LLaVA-OneVision (anyres_max, spatial_unpad, SigLIP, Qwen2) -> `LlavaOnevisionForConditionalGeneration`;
LLaVA-1.5 (one crop per image: pad or square, flat merge; CLIP or SigLIP; Llama, Mistral or Qwen2)
-> `LlavaForConditionalGeneration`.

Weights keep their dtype and values; only names change (transformers 5 names). Also written: a
config.json (`[h, w]` pinpoints; SigLIP as its kept layers with `vision_feature_layer -1`), the
tokenizer with the placeholder tokens, the image (and OneVision's video) processor config,
processor_config.json, the chat template, generation_config.json and a README. Audio towers have no
llava-hf home: their tensors go to `audio_tower.safetensors` beside the export (ORIG names), and the
README says so. Refused (ConfigError): what neither class can represent.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Literal

from model_runtime.arch import layout
from model_runtime.checkpoint.folder import weight_files
from model_runtime.checkpoint.hf_layout import ORIG_TO_HF
from model_runtime.checkpoint.safetensors_io import SafetensorsFile
from model_runtime.config import ConfigError, LlavaConfig, read_config_dict
from model_runtime.processing.image import CLIP_MEAN, CLIP_STD, SIGLIP_MEAN, SIGLIP_STD

AUDIO_PREFIXES = ("model.speech_encoder.", "model.speech_projector.")
AUDIO_SIDE_FILE = "audio_tower.safetensors"
ONEVISION, LLAVA = "LlavaOnevisionForConditionalGeneration", "LlavaForConditionalGeneration"


def hf_key(orig: str) -> str | None:
    """ORIG weight name -> transformers 5 name (LlavaOnevision / Llava ForConditionalGeneration; None:
    no counterpart, i.e. the audio tower)."""
    if orig.startswith(AUDIO_PREFIXES):
        return None
    for old, new in ORIG_TO_HF:
        if orig.startswith(old):
            return new + orig[len(old):]
    raise ConfigError(f"{orig}: no llava-hf counterpart known")


def export_class(cfg: LlavaConfig) -> str:
    """The transformers class an ORIG checkpoint exports to: LlavaOnevision for anyres ones, Llava
    for one crop per image (LLaVA-1.5); ConfigError naming what that class cannot represent."""
    problems = []
    if cfg.mm_projector_type != "mlp2x_gelu":
        problems.append(f"mm_projector_type {cfg.mm_projector_type!r} (only mlp2x_gelu)")
    if cfg.mm_use_im_start_end:
        problems.append("mm_use_im_start_end")
    if cfg.is_anyres:
        target = ONEVISION
        if cfg.language != "qwen2":
            problems.append(f"language model {cfg.language!r} (LlavaOnevision here is exported with Qwen2)")
        if cfg.vision.kind != "siglip":
            problems.append(f"vision tower {cfg.vision.kind!r} (only SigLIP)")
        if cfg.mm_patch_merge_type != "spatial_unpad":
            problems.append(f"mm_patch_merge_type {cfg.mm_patch_merge_type!r} (only spatial_unpad)")
        if cfg.anyres_max is None:
            problems.append(f"image_aspect_ratio {cfg.image_aspect_ratio!r} (only anyres_max_N)")
    else:
        target = LLAVA
        if cfg.mm_patch_merge_type != "flat":
            problems.append(f"mm_patch_merge_type {cfg.mm_patch_merge_type!r} (only flat: no image_newline)")
        if cfg.vision.kind == "clip" and cfg.mm_vision_select_feature not in ("patch", "cls_patch"):
            problems.append(f"mm_vision_select_feature {cfg.mm_vision_select_feature!r} (only patch or cls_patch)")
        if cfg.rope_scaling:
            problems.append(f"rope_scaling {cfg.rope_scaling!r} (not exported)")
    if problems:
        raise ConfigError(f"cannot export to {target.removesuffix('ForConditionalGeneration')}: " + "; ".join(problems))
    return target


def _add_placeholder_token(tok_json: dict, token: str) -> int:
    """Id of `token` in a tokenizer.json dict, appended as a special added token if missing."""
    vocab = tok_json["model"]["vocab"]
    for added in tok_json.get("added_tokens", []):
        if added["content"] == token:
            return added["id"]
    if token in vocab:
        return vocab[token]
    ids = list(vocab.values()) + [a["id"] for a in tok_json.get("added_tokens", [])]
    new_id = max(ids) + 1
    tok_json.setdefault("added_tokens", []).append({
        "id": new_id, "content": token, "single_word": False, "lstrip": False, "rstrip": False,
        "normalized": False, "special": True,
    })
    return new_id


def export_hf(src_dir: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Convert an ORIG-layout checkpoint (llava-serve's demos) into a llava-hf folder of the class
    `export_class` picks. Returns a report: the class, image/video token ids, the ORIG keys left out
    (audio tower), whether tokens were added.

    Weights keep their dtype and values; only names change. The text vocabulary is kept as it is:
    the placeholders (`<image>`, and `<video>` for OneVision) are reused when the tokenizer has them
    (the demos do) and appended as special tokens otherwise (embedding rows are zero-padded only if
    a new id is past vocab_size).
    """
    from safetensors.torch import save_file

    src, out = Path(src_dir), Path(out_dir)
    raw = read_config_dict(src)
    cfg = LlavaConfig.from_dict(raw)
    architecture = export_class(cfg)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} is not empty: export-hf writes a new folder")
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"source": str(src), "out": str(out), "architecture": architecture}
    placeholders, report["added_tokens"] = _write_tokenizer(src, out, architecture)
    image_id, video_id = placeholders["<image>"], placeholders.get("<video>")

    vocab_size = max(int(raw["vocab_size"]), *(tid + 1 for tid in placeholders.values()))
    tied = bool(raw.get("tie_word_embeddings", False))
    dtype = str(raw.get("torch_dtype") or raw.get("dtype") or "float32")
    text_config = _text_config(raw, cfg.language, vocab_size, tied)
    if architecture == ONEVISION:
        config, model_cls, processor_files = _onevision(cfg, text_config, image_id, placeholders["<video>"],
                                                        tied)
    else:
        config, model_cls, processor_files = _llava(cfg, text_config, image_id, tied)
    config.architectures = [architecture]
    config.dtype = dtype
    if raw.get("llava_serve_demo"):
        config.llava_serve_demo = raw["llava_serve_demo"]

    state = {name: tensor for file in weight_files(src) for name, tensor in SafetensorsFile(file)}
    weights, left_out = _renamed_weights(state, _shapes(model_cls, config),
                                         architecture, vocab_size, tied)
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    if left_out:
        save_file({k: state[k].contiguous() for k in left_out}, str(out / AUDIO_SIDE_FILE), metadata={"format": "pt"})
    config.save_pretrained(str(out))
    report["left_out"] = {"tensors": len(left_out), "prefixes": sorted({".".join(k.split(".")[:2]) for k in left_out})}
    report["num_tensors"] = len(weights)
    report["dtype"] = dtype

    # generation config: the checkpoint's own (eos = <|im_end|>, <|endoftext|>)
    if (src / "generation_config.json").exists():
        shutil.copy(src / "generation_config.json", out / "generation_config.json")
    for name, content in processor_files.items():
        (out / name).write_text(json.dumps(content, indent=2) + "\n")
    (out / "README.md").write_text(_readme(src, out, raw, cfg, architecture, left_out))
    p = cfg.vision.num_patches_per_side
    report.update(image_token_id=image_id, video_token_id=video_id, vocab_size=vocab_size,
                  tie_word_embeddings=tied, num_image_tokens_per_crop=p * p)
    return report


def _write_tokenizer(src: Path, out: Path, architecture: str) -> tuple[dict[str, int], int]:
    """The tokenizer files with the same vocabulary and the chat template; (placeholder ids, tokens added)."""
    from model_runtime.checkpoint_tools.demo import CHAT_TEMPLATE

    tok_json = json.loads((src / "tokenizer.json").read_text())
    before = len(tok_json.get("added_tokens", []))
    placeholders = {"<image>": _add_placeholder_token(tok_json, "<image>")}
    if architecture == ONEVISION:
        placeholders["<video>"] = _add_placeholder_token(tok_json, "<video>")
    num_added = len(tok_json.get("added_tokens", [])) - before
    (out / "tokenizer.json").write_text(json.dumps(tok_json, ensure_ascii=False))
    tok_config = json.loads((src / "tokenizer_config.json").read_text()) if (src / "tokenizer_config.json").exists() else {}
    template = tok_config.get("chat_template")
    if not template or "image" not in template:
        template = CHAT_TEMPLATE  # the demos' ChatML template that knows image/video parts
    tok_config["chat_template"] = template
    decoder = tok_config.setdefault("added_tokens_decoder", {})
    for token, tid in placeholders.items():
        decoder.setdefault(str(tid), {"content": token, "lstrip": False, "rstrip": False, "normalized": False,
                                      "single_word": False, "special": True})
    tok_config.setdefault("tokenizer_class", "PreTrainedTokenizerFast")
    (out / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2, ensure_ascii=False) + "\n")
    (out / "chat_template.jinja").write_text(template)  # the processor's template (transformers 5 layout)
    return placeholders, num_added


def _shapes(model_cls, config) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape of `model_cls(config)`, built on the meta device (no memory)."""
    import torch

    with torch.device("meta"):
        skeleton = model_cls(config)
    return {k: tuple(t.shape) for k, t in skeleton.state_dict().items()}


def _renamed_weights(state: dict, expected: dict[str, tuple[int, ...]], architecture: str, vocab_size: int,
                     tied: bool) -> tuple[dict, list[str]]:
    """ORIG names -> transformers names, nothing else changes (embedding rows zero-padded to
    `vocab_size`); (weights, the ORIG keys with no counterpart)."""
    import torch

    weights, left_out = {}, []
    for orig in sorted(state):
        name = hf_key(orig)
        if name is None:
            left_out.append(orig)
            continue
        if name not in expected:
            raise ConfigError(f"{orig} -> {name}: not a parameter of {architecture}")
        tensor = state[orig]
        if name in ("model.language_model.embed_tokens.weight", "lm_head.weight") and tensor.shape[0] < vocab_size:
            tensor = torch.cat([tensor, tensor.new_zeros(vocab_size - tensor.shape[0], tensor.shape[1])])
        if tuple(tensor.shape) != expected[name]:
            raise ConfigError(f"{orig} -> {name}: shape {tuple(tensor.shape)} != {expected[name]}")
        weights[name] = tensor.contiguous()
    missing = sorted(set(expected) - set(weights) - ({"lm_head.weight"} if tied else set()))
    if missing:
        raise ConfigError(f"no ORIG weights for {missing[:5]}{'...' if len(missing) > 5 else ''}")
    return weights, left_out


def _readme(src: Path, out: Path, raw: dict[str, Any], cfg: LlavaConfig, architecture: str,
            left_out: list[str]) -> str:
    notes = [
        f"# llava-hf export of {src.name}",
        "",
        f"Written by `llava-serve export-hf {src} {out}` from an ORIG-layout (original LLaVA) checkpoint.",
        f"Same weight values under transformers' {architecture} names.",
    ]
    if raw.get("llava_serve_demo"):
        notes.append("**The weights are RANDOM (llava-serve demo): generated text is meaningless.**")
    if left_out:
        notes.append(f"Left out: the audio tower ({len(left_out)} tensors, ORIG names, in {AUDIO_SIDE_FILE}); "
                     f"{architecture} has no audio input, so transformers does not read that file.")
    if architecture == ONEVISION and (cfg.mm_newline_position != "one_token" or cfg.mm_spatial_pool_mode != "bilinear"):
        notes.append("Videos differ from ORIG: transformers pools bilinearly with one trailing newline.")
    if architecture == LLAVA:
        notes.append("transformers' LlavaForConditionalGeneration takes no videos.")
    return "\n".join(notes) + "\n"


def _text_config(raw: dict[str, Any], language: str, vocab_size: int, tied: bool):
    """transformers' config of the language model (Qwen2, Llama or Mistral) from ORIG's top-level keys."""
    from transformers import AutoConfig

    keys: dict[str, Any] = dict(
        vocab_size=vocab_size, hidden_size=raw["hidden_size"], intermediate_size=raw["intermediate_size"],
        num_hidden_layers=raw["num_hidden_layers"], num_attention_heads=raw["num_attention_heads"],
        num_key_value_heads=raw.get("num_key_value_heads", raw["num_attention_heads"]),
        hidden_act=raw.get("hidden_act", "silu"), rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
        rope_theta=raw.get("rope_theta", 1000000.0 if language == "qwen2" else 10000.0),
        max_position_embeddings=raw.get("max_position_embeddings", 32768 if language == "qwen2" else 4096),
        attention_dropout=raw.get("attention_dropout", 0.0), tie_word_embeddings=tied,
        bos_token_id=raw.get("bos_token_id"), eos_token_id=raw.get("eos_token_id"),
    )
    if language == "qwen2":
        keys.update(use_sliding_window=False, sliding_window=None,
                    max_window_layers=raw.get("max_window_layers", raw["num_hidden_layers"]))
    elif language == "mistral":
        keys["sliding_window"] = raw.get("sliding_window")
    return AutoConfig.for_model(language, **keys)


def _onevision(cfg: LlavaConfig, text_config, image_id: int, video_id: int, tied: bool):
    """LlavaOnevision config, class and processor files (SigLIP's squash and 0.5/0.5, bicubic)."""
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

    v = cfg.vision
    config = LlavaOnevisionConfig(
        text_config=text_config, vision_config=_siglip_config(cfg),
        image_token_index=image_id, video_token_index=video_id,
        # hidden_states[-1] of the kept layers == ORIG's output of its truncated tower (before post_layernorm)
        vision_feature_layer=-1, vision_feature_select_strategy="full",
        vision_aspect_ratio=f"anyres_max_{cfg.anyres_max}",
        image_grid_pinpoints=[[h, w] for w, h in cfg.image_grid_pinpoints],  # ORIG (w, h) -> transformers [h, w]
        projector_hidden_act="gelu", multimodal_projector_bias=True, tie_word_embeddings=tied,
    )
    size = {"height": v.image_size, "width": v.image_size}
    common = {"processor_class": "LlavaOnevisionProcessor", "do_convert_rgb": True, "do_resize": True, "size": size,
              "resample": 3,  # bicubic, as ORIG's PIL resizes
              "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
              "image_mean": list(SIGLIP_MEAN), "image_std": list(SIGLIP_STD)}
    p = v.num_patches_per_side
    files = {
        "preprocessor_config.json": {"image_processor_type": "LlavaOnevisionImageProcessor", **common, "do_pad": True,
                                     "image_grid_pinpoints": [[h, w] for w, h in cfg.image_grid_pinpoints]},
        "video_preprocessor_config.json": {"video_processor_type": "LlavaOnevisionVideoProcessor", **common},
        "processor_config.json": {"processor_class": "LlavaOnevisionProcessor", "image_token": "<image>",
                                  "video_token": "<video>", "num_image_tokens": p * p,
                                  "vision_feature_select_strategy": "full",
                                  "vision_aspect_ratio": f"anyres_max_{cfg.anyres_max}"},
    }
    return config, LlavaOnevisionForConditionalGeneration, files


def _llava(cfg: LlavaConfig, text_config, image_id: int, tied: bool):
    """Llava (LLaVA-1.5) config, class and processor files: `pad` -> LlavaImageProcessor's do_pad
    (mean-colour square), `square` -> the tower's own resize (CLIP: shortest side + centre crop)."""
    from transformers import CLIPVisionConfig, LlavaForConditionalGeneration
    from transformers import LlavaConfig as HfLlavaConfig

    v = cfg.vision
    strategy: Literal["default", "full"]  # transformers' vision_feature_select_strategy
    if v.kind == "clip":
        vision_config = CLIPVisionConfig(
            hidden_size=v.hidden_size, intermediate_size=v.intermediate_size, num_hidden_layers=v.num_hidden_layers,
            num_attention_heads=v.num_attention_heads, image_size=v.image_size, patch_size=v.patch_size,
            layer_norm_eps=v.layer_norm_eps, hidden_act=v.hidden_act,
        )
        layer, strategy = cfg.mm_vision_select_layer, "full" if cfg.has_cls_token else "default"
        mean, std = list(CLIP_MEAN), list(CLIP_STD)
        size, crop = {"shortest_edge": v.image_size}, True
    else:
        vision_config, layer, strategy = _siglip_config(cfg), -1, "full"
        mean, std = list(SIGLIP_MEAN), list(SIGLIP_STD)
        size, crop = {"height": v.image_size, "width": v.image_size}, False
    config = HfLlavaConfig(
        text_config=text_config, vision_config=vision_config, image_token_index=image_id,
        vision_feature_layer=layer, vision_feature_select_strategy=strategy,
        projector_hidden_act="gelu", multimodal_projector_bias=True, tie_word_embeddings=tied,
        image_seq_length=layout.tokens_per_crop(cfg),
    )
    files = {
        "preprocessor_config.json": {
            "image_processor_type": "LlavaImageProcessor", "processor_class": "LlavaProcessor",
            "do_convert_rgb": True, "do_pad": cfg.image_aspect_ratio == "pad", "do_resize": True, "size": size,
            "resample": 3, "do_center_crop": crop, "crop_size": {"height": v.image_size, "width": v.image_size},
            "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": mean, "image_std": std,
        },
        "processor_config.json": {"processor_class": "LlavaProcessor", "image_token": "<image>",
                                  "patch_size": v.patch_size, "vision_feature_select_strategy": strategy,
                                  "num_additional_image_tokens": 1 if v.kind == "clip" else 0},
    }
    return config, LlavaForConditionalGeneration, files


def _siglip_config(cfg: LlavaConfig):
    from transformers import SiglipVisionConfig

    v = cfg.vision
    return SiglipVisionConfig(
        hidden_size=v.hidden_size, intermediate_size=v.intermediate_size,
        num_hidden_layers=v.num_hidden_layers - 1,  # ORIG drops the last layer at load; its weights are not stored
        num_attention_heads=v.num_attention_heads, image_size=v.image_size, patch_size=v.patch_size,
        layer_norm_eps=v.layer_norm_eps, hidden_act=v.hidden_act, vision_use_head=False,
    )
