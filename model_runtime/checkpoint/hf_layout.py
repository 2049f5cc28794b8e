"""The llava-hf layout read as ORIG: a transformers `LlavaOnevision` / `LlavaNext` / `Llava` /
`LlavaNextVideo` `ForConditionalGeneration` folder (config.json with `model_type` llava_onevision /
llava_next / llava / llava_next_video, `text_config`/`vision_config`, weights under transformers'
names) becomes the ORIG config dict and weight names our model classes load, so the same model
code, token counts and engine serve it.

What maps (transformers' key -> ORIG key):

| llava-hf                                             | ORIG                                          |
| ---                                                  | ---                                           |
| `text_config.*` (Qwen2 / Llama / Mistral)            | top-level LM keys, `LlavaQwen/Llama/MistralForCausalLM` |
| `vision_config` (SigLIP, M layers), `vision_feature_layer` F | `mm_vision_tower_config` with M + 2 + F layers (ORIG drops the last) |
| `vision_config` (CLIP, M layers), F, strategy default / full | M layers, `mm_vision_select_layer` F, `patch` / `cls_patch` |
| `projector_hidden_act: gelu`                         | `mm_projector_type: mlp2x_gelu`               |
| llava_onevision: `vision_aspect_ratio` `anyres_max_N` | `image_aspect_ratio`                         |
| llava_next(_video): anyres, `image_grid_pinpoints` `[h, w]` | `anyres`, `image_grid_pinpoints` `[w, h]` |
| anyres images: newline per row                       | `spatial_unpad`                               |
| llava_onevision videos: 2x bilinear pool after the projector, one newline | `one_token`, `bilinear` |
| llava (1.5): one crop per image, no newline; preprocessor_config.json `do_pad` | `flat`; `pad` (also when the file does not say) / `square` (`do_pad: false`) |
| llava_next_video videos: `spatial_pool_mode` average / max, `spatial_pool_stride` s, before the projector, no newline | `mm_spatial_pool_mode`, `mm_spatial_pool_stride` s, `video_pool_position: before_projector` (a llava-serve key), `no_token` |

Weights: the transformers 4.x hub names (`language_model.model.*`, `vision_tower.vision_model.*`,
`multi_modal_projector.linear_1`) and the transformers 5 names (`model.language_model.*`,
`model.vision_tower.*`) both load, through `HF_KEY_MAPPING` (regexes on checkpoint names).
Refused (ConfigError naming the key): other text or vision models, several feature layers, a
projector other than gelu with biases, LlavaNextVideo's learned `conv` pooling. `export_hf`
(hf_export.py) writes the reverse.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from model_runtime.config.errors import ConfigError
from model_runtime.config.llava import read_json_object
from model_runtime.config.towers import KNOWN_CLIP_TOWERS, SIGLIP_SO400M

HF_MODEL_TYPES = ("llava_onevision", "llava_next", "llava", "llava_next_video")
LAYOUT_KEY = "llava_hf_layout"  # set in the translated dict: where the config came from
PREPROCESSOR_CONFIG = "preprocessor_config.json"
# LlavaNextConfig's / LlavaNextVideoConfig's pinpoints ([h, w]) where config.json states none
HF_DEFAULT_PINPOINTS = ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))
# LlavaNextVideo's spatial_pool_mode: average / max pool with no weights; "conv" is a learned layer
# (`vision_resampler.pool`) that ORIG's model has no place for
VIDEO_POOL_MODES = ("average", "max")
# `hf_behaviour`: where transformers and ORIG differ, serve ORIG's behaviour ("original") or transformers'
# ("transformers": the checkpoint's chat template, unpad rounding, llava's crop, multi-image layout)
HF_BEHAVIOURS = ("original", "transformers")

# ORIG prefix -> transformers 5 prefix (all four classes); export_hf writes these names
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


def read_preprocessor_config(folder: str | Path) -> dict[str, Any] | None:
    """The folder's preprocessor_config.json (transformers' image processor settings), None if absent."""
    file = Path(folder) / PREPROCESSOR_CONFIG
    return read_json_object(file) if file.exists() else None


def orig_config(raw: dict[str, Any], preprocessor: dict[str, Any] | None = None,
                behaviour: str = "original") -> dict[str, Any]:
    """The ORIG config dict of a llava-hf config.json (refusals as ConfigError, naming the key).
    `preprocessor`: the folder's preprocessor_config.json, which decides `llava`'s image_aspect_ratio.
    `behaviour` "transformers" adds the llava-serve keys that follow transformers where it differs
    from ORIG (`transformers_keys`)."""
    if behaviour not in HF_BEHAVIOURS:
        raise ConfigError(f"hf_behaviour={behaviour!r}: expected one of {', '.join(HF_BEHAVIOURS)}")
    model_type = raw.get("model_type")
    if model_type not in HF_MODEL_TYPES:
        raise ConfigError(f"llava-hf model_type {model_type!r} is not supported (loadable: {', '.join(HF_MODEL_TYPES)})")
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
    layout = _layout_keys(model_type, raw, preprocessor, problems)
    if behaviour == "transformers":
        layout.update(transformers_keys(model_type, preprocessor))
    if problems:
        raise ConfigError(f"llava-hf {model_type}: cannot be served: {'; '.join(problems)}")
    # F indexes hidden_states (0 = embeddings, M + 1 entries). ORIG's SigLIP keeps its first N - 1
    # layers and reads the last kept one (so N - 1 = the layer F reads); ORIG's CLIP reads
    # hidden_states[mm_vision_select_layer] of all its layers, as transformers does
    reads = layer if layer >= 0 else num_layers + 1 + layer
    if not 1 <= reads <= num_layers:
        raise ConfigError(f"llava-hf vision_feature_layer={layer} is outside the tower's {num_layers} layers")
    defaults: Mapping[str, Any] = (
        SIGLIP_SO400M if kind == "siglip" else KNOWN_CLIP_TOWERS["openai/clip-vit-large-patch14-336"]
    )
    tower = {"kind": kind, **{k: type(v)(vision.get(k, v)) for k, v in defaults.items() if k != "num_hidden_layers"}}
    tower["num_hidden_layers"] = reads + 1 if kind == "siglip" else num_layers
    out = _text_keys(text, language)
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
        mm_use_im_start_end=False,
        mm_use_im_patch_token=False,
        image_token_index=raw.get("image_token_index", raw.get("image_token_id")),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", text.get("tie_word_embeddings", False))),
        torch_dtype=raw.get("torch_dtype") or raw.get("dtype") or text.get("torch_dtype") or text.get("dtype"),
        **layout,
        **{LAYOUT_KEY: model_type},
    )
    if raw.get("llava_serve_demo"):
        out["llava_serve_demo"] = raw["llava_serve_demo"]
    return {k: v for k, v in out.items() if v is not None}


def _text_keys(text: dict[str, Any], language: str) -> dict[str, Any]:
    """ORIG's top-level language-model keys from llava-hf's `text_config`."""
    out: dict[str, Any] = {k: text[k] for k in _TEXT_KEYS if k in text}
    rope = dict(text.get("rope_parameters") or {})  # transformers 5 keeps rope_theta/scaling here
    if "rope_theta" in rope:
        out["rope_theta"] = rope.pop("rope_theta")
    if rope and rope.get("rope_type", "default") != "default":
        out["rope_scaling"] = rope
    out.setdefault("rope_theta", 1000000.0 if language == "qwen2" else 10000.0)  # where neither layout states it
    out.setdefault("tokenizer_model_max_length", text.get("max_position_embeddings"))
    return out


def _layout_keys(model_type: str, raw: dict[str, Any], preprocessor: dict[str, Any] | None,
                 problems: list[str]) -> dict[str, Any]:
    """ORIG's image and video layout keys for each family (what cannot be served goes to `problems`)."""
    if model_type == "llava":
        # one crop per image, no newline (LLaVA-1.5); transformers' Llava has no video input: videos are
        # served as for the same checkpoint in the ORIG layout (pooled after the projector, bilinear)
        return {"image_aspect_ratio": llava_aspect_ratio(preprocessor), "mm_patch_merge_type": "flat",
                "mm_newline_position": "one_token", "mm_spatial_pool_mode": "bilinear"}
    if model_type == "llava_onevision":
        aspect, pinpoints = raw.get("vision_aspect_ratio", "anyres_max_9"), raw.get("image_grid_pinpoints") or []
    else:
        aspect, pinpoints = "anyres", raw.get("image_grid_pinpoints") or HF_DEFAULT_PINPOINTS
    keys = {"image_aspect_ratio": aspect, "image_grid_pinpoints": [[w, h] for h, w in pinpoints],
            "mm_patch_merge_type": "spatial_unpad", "mm_newline_position": "one_token",
            "mm_spatial_pool_mode": "bilinear"}
    if model_type == "llava_next_video":
        # every frame pooled BEFORE the projector with spatial_pool_mode / stride, no newline
        mode, stride = raw.get("spatial_pool_mode", "average"), raw.get("spatial_pool_stride", 2)
        if mode not in VIDEO_POOL_MODES:
            problems.append(f"spatial_pool_mode={mode!r} (only {' or '.join(VIDEO_POOL_MODES)})")
        if not isinstance(stride, int) or isinstance(stride, bool) or stride < 1:
            problems.append(f"spatial_pool_stride={stride!r} (a positive integer)")
        keys.update(mm_spatial_pool_mode=mode, mm_spatial_pool_stride=stride, mm_newline_position="no_token",
                    video_pool_position="before_projector")
    return keys


def transformers_keys(model_type: str, preprocessor: dict[str, Any] | None) -> dict[str, Any]:
    """The layout keys that make a llava-hf checkpoint behave as transformers' class and processor:
    anyres unpadding rounded (`int(round(x, 7))`, transformers' unpad_image) instead of truncated;
    llava_next(_video) and llava: every image of a multi-image request laid out as if it came alone
    (LlavaNextImageProcessor: full anyres; LlavaImageProcessor: its own crop); llava without an
    explicit `do_pad: true`: shortest side + centre crop (`square`) instead of ORIG's `pad`.
    llava_onevision's multi-image layout (one mean-colour square crop + newline) already agrees."""
    keys: dict[str, Any] = {"unpad_rounding": "round"}
    if model_type != "llava_onevision":
        keys["multi_image_layout"] = "as_single"
    if model_type == "llava":
        keys["image_aspect_ratio"] = "pad" if (preprocessor or {}).get("do_pad") is True else "square"
    return keys


def llava_aspect_ratio(preprocessor: dict[str, Any] | None) -> str:
    """`llava` (1.5) images: ORIG pads to a square of the mean colour ("pad"); transformers'
    LlavaImageProcessor does the same only with `do_pad: true` and otherwise resizes the shortest side
    and centre-crops ("square"). No file, or one that does not say (the hub's CLIPImageProcessor
    files): ORIG's pad, what LLaVA-1.5 was trained with. An explicit `do_pad` is followed."""
    do_pad = (preprocessor or {}).get("do_pad")
    if do_pad is None:
        return "pad"
    if not isinstance(do_pad, bool):
        raise ConfigError(f"{PREPROCESSOR_CONFIG}: do_pad={do_pad!r}: expected true or false")
    return "pad" if do_pad else "square"
