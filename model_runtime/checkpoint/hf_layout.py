"""The llava-hf layout read as ORIG: a transformers `LlavaOnevisionForConditionalGeneration` or
`LlavaNextForConditionalGeneration` folder (config.json with `model_type` llava_onevision /
llava_next, `text_config`/`vision_config`, weights under transformers' names) becomes the ORIG
config dict and weight names our model classes load, so the same model code, token counts and
engine serve it.

What maps (transformers' key -> ORIG key):

| llava-hf                                             | ORIG                                          |
| ---                                                  | ---                                           |
| `text_config.*`                                      | top-level LM keys (`hidden_size`, ...)        |
| `vision_config` (SigLIP, M layers), `vision_feature_layer` F | `mm_vision_tower_config` with M + 2 + F layers (ORIG drops the last) |
| `vision_config` (CLIP, M layers), F, strategy default / full | M layers, `mm_vision_select_layer` F, `patch` / `cls_patch` |
| llava_next: Llama / Mistral / Qwen2 `text_config`       | `LlavaLlamaForCausalLM` / `LlavaMistralForCausalLM` / `LlavaQwenForCausalLM`, `anyres` |
| `vision_aspect_ratio` `anyres_max_N`                 | `image_aspect_ratio`                          |
| `image_grid_pinpoints` `[h, w]`                      | `image_grid_pinpoints` `[w, h]`               |
| `projector_hidden_act: gelu`                         | `mm_projector_type: mlp2x_gelu`               |
| images: newline per row; videos: 2x bilinear pool, one newline | `spatial_unpad`, `one_token`, `bilinear` |

Weights: the transformers 4.x hub names (`language_model.model.*`, `vision_tower.vision_model.*`,
`multi_modal_projector.linear_1`) and the transformers 5 names (`model.language_model.*`,
`model.vision_tower.*`) both load, through `HF_KEY_MAPPING` (regexes on checkpoint names).
The other llava-hf families (llava, llava_next_video) are refused with a clear message for now. `export_hf` (hf_export.py) writes the reverse.
"""

from __future__ import annotations

import re
from typing import Any

from model_runtime.config.errors import ConfigError
from model_runtime.config.towers import KNOWN_CLIP_TOWERS, SIGLIP_SO400M

HF_MODEL_TYPES = ("llava_onevision", "llava_next", "llava", "llava_next_video")
LOADABLE = ("llava_onevision", "llava_next")
LAYOUT_KEY = "llava_hf_layout"  # set in the translated dict: where the config came from

# ORIG prefix -> transformers 5 prefix (LlavaOnevision / LlavaNext); export_hf writes these names
ORIG_TO_HF = (
    ("model.vision_tower.vision_tower.vision_model.", "model.vision_tower."),  # no `vision_model` level in 5.x
    ("model.mm_projector.0.", "model.multi_modal_projector.linear_1."),
    ("model.mm_projector.2.", "model.multi_modal_projector.linear_2."),
    ("model.image_newline", "model.image_newline"),
    ("model.", "model.language_model."),  # embed_tokens, layers, norm
    ("lm_head.", "lm_head."),
)
_TOWER = ORIG_TO_HF[0][0]
# checkpoint name -> ORIG name, applied in order: the 4.x hub names (and transformers 5's own
# save_pretrained, which writes `vision_tower.*` without `vision_model`), then the reverse of ORIG_TO_HF
HF_KEY_MAPPING = {
    r"^language_model\.model\.": "model.",
    r"^language_model\.lm_head\.": "lm_head.",
    r"^vision_tower\.(vision_model\.)?": _TOWER,
    r"^multi_modal_projector\.linear_1\.": "model.mm_projector.0.",
    r"^multi_modal_projector\.linear_2\.": "model.mm_projector.2.",
    r"^image_newline$": "model.image_newline",
    **{"^" + re.escape(hf) + ("(?!vision_tower\\.)" if orig == _TOWER else ""): orig
       for orig, hf in ORIG_TO_HF if orig != hf},
}

_TEXT_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "hidden_act", "rms_norm_eps", "rope_theta", "rope_scaling",
              "max_position_embeddings", "max_window_layers", "attention_dropout", "bos_token_id",
              "eos_token_id", "use_sliding_window", "sliding_window", "initializer_range")
_ARCHITECTURE = {"qwen2": "LlavaQwenForCausalLM", "llama": "LlavaLlamaForCausalLM", "mistral": "LlavaMistralForCausalLM"}
_TOWER_KIND = {"siglip_vision_model": "siglip", "clip_vision_model": "clip"}


def is_llava_hf(raw: dict[str, Any]) -> bool:
    """ORIG configs say `model_type: llava` too; llava-hf ones nest the LM in `text_config` and
    name a `...ForConditionalGeneration` architecture."""
    archs = raw.get("architectures") or ()
    return raw.get("model_type") in HF_MODEL_TYPES and (
        "text_config" in raw or any(str(a).endswith("ForConditionalGeneration") for a in archs))


def orig_config(raw: dict[str, Any]) -> dict[str, Any]:
    """The ORIG config dict of a llava-hf config.json (refusals as ConfigError, naming the key)."""
    model_type = raw.get("model_type")
    if model_type not in LOADABLE:
        raise ConfigError(f"llava-hf model_type {model_type!r} is not supported yet (loadable: {', '.join(LOADABLE)}); "
                          "convert it to the original LLaVA layout or serve a llava_onevision checkpoint")
    text = dict(raw.get("text_config") or {})
    vision = dict(raw.get("vision_config") or {})
    onevision = model_type == "llava_onevision"
    language = text.get("model_type", "qwen2" if onevision else "llama")
    if language not in _ARCHITECTURE or (onevision and language != "qwen2"):
        raise ConfigError(f"llava-hf {model_type} with text model {language!r}: only "
                          f"{'qwen2' if onevision else ', '.join(_ARCHITECTURE)} is supported")
    kind = _TOWER_KIND.get(vision.get("model_type", "siglip_vision_model" if onevision else "clip_vision_model"))
    if kind is None or (onevision and kind != "siglip"):
        raise ConfigError(f"llava-hf {model_type} with vision model {vision.get('model_type')!r}: "
                          f"only {'SigLIP' if onevision else 'SigLIP or CLIP'}")
    strategy = raw.get("vision_feature_select_strategy", "full" if onevision else "default")
    problems = []
    if strategy not in ("full", "default") or (kind == "siglip" and strategy != "full"):
        problems.append(f"vision_feature_select_strategy={strategy!r}")
    if raw.get("projector_hidden_act", "gelu") != "gelu":
        problems.append(f"projector_hidden_act={raw.get('projector_hidden_act')!r} (only gelu)")
    if raw.get("multimodal_projector_bias", True) is not True:
        problems.append("multimodal_projector_bias=false")
    if vision.get("vision_use_head"):
        problems.append("vision_config.vision_use_head=true")
    layer = raw.get("vision_feature_layer", -1 if onevision else -2)
    if not isinstance(layer, int):
        problems.append(f"vision_feature_layer={layer!r} (one layer only)")
        layer = -1
    num_layers = int(vision.get("num_hidden_layers", 26 if onevision else 24))
    if problems:
        raise ConfigError(f"llava-hf {model_type}: cannot be served: {'; '.join(problems)}")
    # F indexes hidden_states (0 = embeddings, M + 1 entries). ORIG's SigLIP keeps its first N - 1
    # layers and reads the last kept one (so N - 1 = the layer F reads); ORIG's CLIP reads
    # hidden_states[mm_vision_select_layer] of all its layers, as transformers does
    reads = layer if layer >= 0 else num_layers + 1 + layer
    if not 1 <= reads <= num_layers:
        raise ConfigError(f"llava-hf vision_feature_layer={layer} is outside the tower's {num_layers} layers")
    defaults = SIGLIP_SO400M if kind == "siglip" else KNOWN_CLIP_TOWERS["openai/clip-vit-large-patch14-336"]
    tower = {"kind": kind, **{k: type(v)(vision.get(k, v)) for k, v in defaults.items() if k != "num_hidden_layers"}}
    tower["num_hidden_layers"] = reads + 1 if kind == "siglip" else num_layers
    out: dict[str, Any] = {k: text[k] for k in _TEXT_KEYS if k in text}
    rope = dict(text.get("rope_parameters") or {})  # transformers 5 keeps rope_theta/scaling here
    if "rope_theta" in rope:
        out["rope_theta"] = rope.pop("rope_theta")
    if rope and rope.get("rope_type", "default") != "default":
        out["rope_scaling"] = rope
    out.setdefault("rope_theta", 1000000.0 if language == "qwen2" else 10000.0)  # where neither layout states it
    out.setdefault("tokenizer_model_max_length", text.get("max_position_embeddings"))
    aspect = raw.get("vision_aspect_ratio", "anyres_max_9") if onevision else "anyres"
    out.update(
        architectures=[_ARCHITECTURE[language]],
        model_type="llava",
        mm_vision_tower=raw.get("vision_tower_name") or ("google/siglip-so400m-patch14-384" if kind == "siglip"
                                                         else "openai/clip-vit-large-patch14-336"),
        mm_vision_tower_config=tower,
        mm_hidden_size=tower["hidden_size"],
        mm_vision_select_layer=layer if kind == "clip" else -2,
        mm_vision_select_feature="patch" if strategy == "default" or kind == "siglip" else "cls_patch",
        mm_projector_type="mlp2x_gelu",
        image_aspect_ratio=aspect,
        image_grid_pinpoints=[[w, h] for h, w in raw.get("image_grid_pinpoints") or []],
        mm_patch_merge_type="spatial_unpad",
        mm_newline_position="one_token",
        mm_spatial_pool_mode="bilinear",
        mm_use_im_start_end=False,
        mm_use_im_patch_token=False,
        image_token_index=raw.get("image_token_index", raw.get("image_token_id")),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", text.get("tie_word_embeddings", False))),
        torch_dtype=raw.get("torch_dtype") or raw.get("dtype") or text.get("torch_dtype") or text.get("dtype"),
        **{LAYOUT_KEY: model_type},
    )
    if raw.get("llava_serve_demo"):
        out["llava_serve_demo"] = raw["llava_serve_demo"]
    return {k: v for k, v in out.items() if v is not None}

