"""LLaVA meta mixins: towers + projector on the base model, media encoding and splicing.

`LlavaMetaModel` adds ORIG's `vision_tower`, `mm_projector` and `image_newline` (and, with a
`speech_encoder` key, EgoGPT's `speech_encoder` + `speech_projector`) to a transformers base model
(so checkpoint keys load unchanged). `LlavaMetaForCausalLM` encodes media items into
feature rows (ORIG llava_arch.py: encode_images + the spatial merge) and splices them into the
token embeddings at sentinel positions (`prepare_inputs_for_multimodal`). Every row count comes
from `layout.py`. No tokenizer, no HTTP, no scheduling here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from model_runtime.arch import layout
from model_runtime.arch.audio import build_audio_tower
from model_runtime.arch.projector import SpeechProjector, build_vision_projector
from model_runtime.arch.vision import build_vision_tower
from model_runtime.config import LlavaConfig
from model_runtime.inputs import EncodedItem, MediaInput


class MediaMismatchError(ValueError):
    """Placeholders and media items of a row disagree (ORIG reused or dropped items silently)."""


class LlavaMetaModel:
    """Mixin placed before the transformers base model class (ORIG LlavaMetaModel)."""

    def __init__(self, config) -> None:
        super().__init__(config)
        self.llava_config = LlavaConfig.from_dict(config.to_dict())
        self.vision_tower = build_vision_tower(self.llava_config)
        self.mm_projector = build_vision_projector(self.llava_config)
        if self.llava_config.has_image_newline:
            # ORIG training init (randn / sqrt(D)); a checkpoint's value replaces it at load
            self.image_newline = nn.Parameter(torch.randn(config.hidden_size) * config.hidden_size**-0.5)
        if self.llava_config.audio is not None:
            self.speech_encoder = build_audio_tower(self.llava_config)
            self.speech_projector = SpeechProjector(self.llava_config)


class LlavaMetaForCausalLM:
    """Mixin for the causal LM class; `self.model` is a LlavaMetaModel."""

    @property
    def llava_config(self) -> LlavaConfig:
        return self.model.llava_config

    # -- encoding ---------------------------------------------------------------------------
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # pixel_values: [N, 3, S, S] -> [N, P*P, D]
        dtype = self.model.embed_tokens.weight.dtype
        features = self.model.vision_tower(pixel_values.to(dtype))
        return self.model.mm_projector(features)

    def encode_media(self, media: Sequence[MediaInput]) -> list[EncodedItem]:
        """Items of any requests -> encoded items in the same order (one tower call per modality)."""
        device = self.model.embed_tokens.weight.device
        encoders = {"image": self._encode_image_inputs, "audio": self.encode_audio_items}
        unsupported = {m.modality for m in media} - set(encoders)
        if unsupported:
            raise ValueError(f"modalities {sorted(unsupported)} are not supported yet")
        rows: list[torch.Tensor | None] = [None] * len(media)
        for modality, encode in encoders.items():
            picked = [i for i, m in enumerate(media) if m.modality == modality]
            if picked:
                for i, features in zip(picked, encode([media[i] for i in picked], device), strict=True):
                    rows[i] = features
        return [EncodedItem(m.modality, r) for m, r in zip(media, rows, strict=True)]

    def _encode_image_inputs(self, images: Sequence[MediaInput], device) -> list[torch.Tensor]:
        return self.encode_image_items(
            [m.data.to(device) for m in images], [m.image_size for m in images], [m.single_crop for m in images]
        )

    def encode_audio_items(self, items: Sequence[MediaInput], device) -> list[torch.Tensor]:
        """Audio items (each [C_i, n_mels, 3000] mel chunks) -> rows [n_i, D], one tower call.

        Each chunk gives (3000 + 1) // 2 encoder frames -> // k projector rows; every chunk keeps
        the rows `layout.audio_chunk_token_counts` gives it (all of them unless the checkpoint trims
        the padding of the last chunk), chunks in time order.
        """
        if self.llava_config.audio is None:
            raise ValueError("this checkpoint has no audio tower")
        mel = torch.cat([m.data for m in items], dim=0).to(device)  # [sum C_i, n_mels, 3000]
        frames = self.model.speech_encoder.encode(mel)  # [sum C_i, 1500, Ca]
        projected = self.model.speech_projector(frames.to(self.model.speech_projector.linear1.weight.dtype))
        projected = projected.to(self.model.embed_tokens.weight.dtype)  # [sum C_i, 1500 // k, D]
        out = []
        for item, chunks in zip(items, torch.split(projected, [m.data.shape[0] for m in items]), strict=True):
            counts = layout.audio_chunk_token_counts(self.llava_config, item.num_samples)
            if len(counts) != chunks.shape[0]:
                raise layout.LayoutError(f"{chunks.shape[0]} mel chunks for audio of {item.num_samples} samples")
            out.append(torch.cat([c[:n] for c, n in zip(chunks, counts, strict=True)], dim=0))
        return out

    def encode_image_items(
        self, crops: Sequence[torch.Tensor], sizes: Sequence[tuple[int, int]], single_crop: Sequence[bool]
    ) -> list[torch.Tensor]:
        """Images (each [k_i, 3, S, S] crops, source (W, H)) -> per-image rows [n_i, D], one tower call."""
        if not crops:
            return []
        features = self.encode_images(torch.cat(list(crops), dim=0))
        per_item = torch.split(features, [c.shape[0] for c in crops], dim=0)
        return [
            self.merge_image_features(f, size, single)
            for f, size, single in zip(per_item, sizes, single_crop, strict=True)
        ]

    def merge_image_features(self, features: torch.Tensor, size: tuple[int, int], single_crop: bool) -> torch.Tensor:
        """ORIG spatial merge of one image's crops: features [k, P*P, D] -> rows [n, D]."""
        cfg = self.llava_config
        merge = cfg.mm_patch_merge_type
        if merge == "flat":
            rows = features.flatten(0, 1)
        elif features.shape[0] == 1:
            rows = features[0]
            if cfg.has_image_newline:
                rows = torch.cat([rows, self.model.image_newline[None].to(rows.dtype)], dim=0)
        else:
            rows = self._merge_anyres(features, size)
        expected = layout.image_token_count(cfg, size, single_crop=single_crop)
        if rows.shape[0] != expected:
            raise layout.LayoutError(f"image rows {rows.shape[0]} != layout count {expected} for size {size}")
        return rows

    def _merge_anyres(self, features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        cfg = self.llava_config
        merge = cfg.mm_patch_merge_type
        p = cfg.vision.num_patches_per_side
        d = features.shape[-1]
        base, crops = features[0], features[1:]
        if not cfg.is_anyres:
            raise layout.LayoutError(f"{features.shape[0]} crops for image_aspect_ratio={cfg.image_aspect_ratio!r}")
        nw, nh = layout.anyres_grid(cfg, size)
        if crops.shape[0] != nw * nh:
            raise layout.LayoutError(f"{crops.shape[0]} crops for a {nw}x{nh} grid")
        # stitch crops row-major into one map [D, nh*P, nw*P]
        grid = crops.view(nh, nw, p, p, d).permute(4, 0, 2, 1, 3).reshape(d, nh * p, nw * p)
        if "maxpool2x2" in merge:
            grid = F.max_pool2d(grid[None], 2)[0]
            rows = grid.flatten(1).transpose(0, 1)
        elif "unpad" in merge:
            top, bottom, left, right = layout.unpad_bounds(size, nh * p, nw * p)
            grid = grid[:, top:bottom, left:right]
            if cfg.anyres_max is not None:
                h, w = grid.shape[1:]
                target = layout.anyres_max_shape(h, w, cfg.anyres_max, p * p)
                if target != (h, w):
                    grid = F.interpolate(grid[None], size=target, mode="bilinear")[0]
            newline = self.model.image_newline.to(grid.dtype)[:, None, None].expand(d, grid.shape[1], 1)
            grid = torch.cat([grid, newline], dim=2)
            rows = grid.flatten(1).transpose(0, 1)
        else:
            rows = grid.flatten(1).transpose(0, 1)
        if "nobase" not in merge:
            rows = torch.cat([base, rows], dim=0)
        return rows

    # -- splicing ---------------------------------------------------------------------------
    def prepare_inputs_for_multimodal(
        self,
        rows: Sequence[Sequence[int]],
        items: Sequence[Sequence[EncodedItem]],
        padding_side: str = "left",
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Token ids with sentinels + each row's encoded items -> padded LM inputs.

        rows[b]: ids of row b, sentinels where items go; items[b]: row b's items in request order.
        Each sentinel takes the next item OF ITS MODALITY within its own row; a row without
        sentinels takes none. Returns inputs_embeds [B, L, D], attention_mask [B, L] (long) and
        position_ids [B, L] (0.. over real tokens, 0 on padding).
        """
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side={padding_side!r}")
        embed = self.model.embed_tokens
        device = embed.weight.device
        sequences: list[torch.Tensor] = []
        for b, (ids, row_items) in enumerate(zip(rows, items, strict=True)):
            sequences.append(self._splice_row(b, list(ids), list(row_items), embed, device))
        max_len = max(s.shape[0] for s in sequences)
        dim = sequences[0].shape[1]
        batch = len(sequences)
        embeds = torch.zeros(batch, max_len, dim, dtype=embed.weight.dtype, device=device)
        mask = torch.zeros(batch, max_len, dtype=torch.long, device=device)
        positions = torch.zeros(batch, max_len, dtype=torch.long, device=device)
        for b, seq in enumerate(sequences):
            n = seq.shape[0]
            start = max_len - n if padding_side == "left" else 0
            embeds[b, start : start + n] = seq
            mask[b, start : start + n] = 1
            positions[b, start : start + n] = torch.arange(n, device=device)
        return embeds, mask, positions

    def _splice_row(self, b: int, ids: list[int], items: list[EncodedItem], embed: nn.Module, device) -> torch.Tensor:
        queues: dict[int, list[torch.Tensor]] = {}
        for item in items:
            queues.setdefault(item.sentinel, []).append(item.features)
        slots = [(i, t) for i, t in enumerate(ids) if t < 0]
        wanted: dict[int, int] = {}
        for _, t in slots:
            wanted[t] = wanted.get(t, 0) + 1
        have = {s: len(q) for s, q in queues.items()}
        if wanted != have:
            raise MediaMismatchError(f"row {b}: placeholders by sentinel {wanted} but items {have}")
        text_ids = torch.tensor([t for t in ids if t >= 0], dtype=torch.long, device=device)
        text_embeds = embed(text_ids)
        pieces: list[torch.Tensor] = []
        cursor = 0  # index into text_embeds
        start = 0  # index into ids
        taken = dict.fromkeys(queues, 0)
        for pos, sentinel in slots:
            n_text = pos - start
            pieces.append(text_embeds[cursor : cursor + n_text])
            cursor += n_text
            feature = queues[sentinel][taken[sentinel]]
            taken[sentinel] += 1
            pieces.append(feature.to(device=device, dtype=text_embeds.dtype))
            start = pos + 1
        pieces.append(text_embeds[cursor:])
        return torch.cat(pieces, dim=0)
