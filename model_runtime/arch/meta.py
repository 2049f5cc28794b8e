"""LLaVA meta mixins: towers + projector on the base model, media encoding and splicing.

`LlavaMetaModel` adds ORIG's `vision_tower`, `mm_projector`, `image_newline` and `faster_token`
(and, with a `speech_encoder` key, EgoGPT's `speech_encoder` + `speech_projector`) to a
transformers base model (so checkpoint keys load unchanged). `LlavaMetaForCausalLM` encodes
media items into feature rows (ORIG llava_arch.py: one tower + projector call, then the per-item
merge of `merge.py`; audio: one Whisper call for all chunks) and splices them into the token
embeddings at sentinel positions (`prepare_inputs_for_multimodal`; `prepare_inputs_for_training`
adds labels). Every row count is checked against `layout.py`. No tokenizer, no HTTP, no
scheduling here.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from model_runtime.arch import layout, merge
from model_runtime.arch.audio import WhisperAudioTower, build_audio_tower
from model_runtime.arch.encoding import VISUAL_MODALITIES, EncodingJob
from model_runtime.arch.projector import SpeechProjector, build_vision_projector
from model_runtime.arch.segments import MediaMismatchError, TextRun, split_prompt
from model_runtime.arch.vision import build_vision_tower
from model_runtime.config import LlavaConfig
from model_runtime.constants import IGNORE_INDEX
from model_runtime.inputs import EncodedItem, MediaInput


class LlavaMetaModel(nn.Module):
    """Mixin placed before the transformers base model class (ORIG LlavaMetaModel); its
    `nn.Module` base comes after that class in the MRO, so `super().__init__` reaches the model."""

    embed_tokens: nn.Embedding  # the base model's, as are the three below
    layers: nn.ModuleList
    rotary_emb: Any  # each family's own rotary embedding and RMSNorm classes
    norm: Any
    image_newline: nn.Parameter  # [D], with `has_image_newline`
    faster_token: nn.Parameter  # [D], with `add_faster_video`
    speech_encoder: WhisperAudioTower  # with an audio tower
    speech_projector: SpeechProjector

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.llava_config = LlavaConfig.from_dict(config.to_dict())
        self.vision_tower = build_vision_tower(self.llava_config)
        self.mm_projector = build_vision_projector(self.llava_config)
        scale = config.hidden_size**-0.5  # ORIG training init (randn / sqrt(D)); checkpoints replace it
        if self.llava_config.has_image_newline:
            self.image_newline = nn.Parameter(torch.randn(config.hidden_size) * scale)
        if self.llava_config.add_faster_video:
            # ORIG creates it only in training setup, so its checkpoints' value could not load (spec 13)
            self.faster_token = nn.Parameter(torch.randn(config.hidden_size) * scale)
        if self.llava_config.audio is not None:
            self.speech_encoder = build_audio_tower(self.llava_config)
            self.speech_projector = SpeechProjector(self.llava_config)


class LlavaMetaForCausalLM:
    """Mixin for the causal LM class; `self.model` is a LlavaMetaModel."""

    # set by the transformers causal LM this mixin is combined with
    model: LlavaMetaModel
    config: Any  # the language model's transformers config
    lm_head: nn.Linear
    training: bool

    @property
    def llava_config(self) -> LlavaConfig:
        return self.model.llava_config

    # -- what the serving engine reads (engine/served_model.py) ------------------------------
    @property
    def text_config(self) -> Any:
        """The language model's transformers config (layers, heads, sizes, attention implementation)."""
        return self.config

    @property
    def compute_device(self) -> torch.device:
        """Where the language model's inputs go (the token embeddings' device)."""
        return self.model.embed_tokens.weight.device

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype of the language model's activations and of its KV cache (quantized linears included)."""
        return self.model.embed_tokens.weight.dtype

    @property
    def logits_size(self) -> int:
        """Width of the output head's logits (can exceed the tokenizer's vocabulary)."""
        return self.lm_head.out_features

    @property
    def decoder_layers(self) -> Sequence[nn.Module]:
        """The decoder layers the forward runs, in order."""
        return list(self.model.layers)[: self.text_config.num_hidden_layers]

    def embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_tokens(ids)

    def rotary_embeddings(self, hidden: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.rotary_emb(hidden, position_ids)

    def next_token_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The last decoder layer's hidden states [R, D] -> float32 logits [R, V]."""
        return self.lm_head(self.model.norm(hidden)).float()

    # -- encoding ---------------------------------------------------------------------------
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # pixel_values: [N, 3, S, S] -> [N, T, D] (T = layout.tokens_per_crop)
        dtype = self.model.embed_tokens.weight.dtype
        features = self.model.vision_tower(pixel_values.to(dtype))
        return self.model.mm_projector(features)

    def encode_media(self, media: Sequence[MediaInput]) -> list[EncodedItem]:
        """Items of any requests -> encoded items in the same order (one tower call for all
        images and video frames, one Whisper call for all audio chunks). Each item's rows must
        equal its `num_tokens`."""
        unsupported = {m.modality for m in media} - {*VISUAL_MODALITIES, "audio"}
        if unsupported:
            raise ValueError(f"modalities {sorted(unsupported)} are not supported yet")
        rows: dict[int, torch.Tensor] = {}  # media index -> its rows
        for modalities, encode in ((VISUAL_MODALITIES, self.encode_visual_items), (("audio",), self.encode_audio_items)):
            picked = [i for i, m in enumerate(media) if m.modality in modalities]
            rows.update(zip(picked, encode([media[i] for i in picked]), strict=True))
        for i, m in enumerate(media):
            if rows[i].shape[0] != m.num_tokens:
                raise layout.LayoutError(
                    f"{m.modality} item: {rows[i].shape[0]} rows but {m.num_tokens} tokens charged"
                )
        return [EncodedItem(m.modality, rows[i]) for i, m in enumerate(media)]

    def encode_audio_items(self, items: Sequence[MediaInput]) -> list[torch.Tensor]:
        """Audio items (each [C_i, n_mels, 3000] mel chunks) -> rows [n_i, D], one tower call.

        Each chunk gives (3000 + 1) // 2 encoder frames -> // k projector rows; every chunk keeps
        the rows `layout.audio_chunk_token_counts` gives it (all of them unless the checkpoint trims
        the padding of the last chunk), chunks in time order.
        """
        if not items:
            return []
        if self.llava_config.audio is None:
            raise ValueError("this checkpoint has no audio tower")
        device = self.model.embed_tokens.weight.device
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

    def encode_visual_items(self, media: Sequence[MediaInput]) -> list[torch.Tensor]:
        """Images ([k, 3, S, S] crops) and videos ([F, 3, S, S] frames) -> rows [n_i, D] each."""
        if not media:
            return []
        device = self.model.embed_tokens.weight.device
        pixels = torch.cat([m.data.to(device) for m in media], dim=0)
        counts = [m.data.shape[0] for m in media]
        per_item: Sequence[torch.Tensor]
        if self.llava_config.pools_video_before_projector and any(m.modality == "video" for m in media):
            towers = self.model.vision_tower(pixels.to(self.model.embed_tokens.weight.dtype))  # [N, T, Cv]
            split = torch.split(towers, counts)
            per_item = [self.project_visual_item(m, f) for m, f in zip(media, split, strict=True)]
        else:
            per_item = torch.split(self.encode_images(pixels), counts, dim=0)
        return [self.finish_visual_item(m, f) for m, f in zip(media, per_item, strict=True)]

    def project_visual_item(self, item: MediaInput, features: torch.Tensor) -> torch.Tensor:
        """An item's tower features [k, T, Cv] -> projected [k, T', D]; a video's frames are pooled
        first where the checkpoint pools before the projector (llava-hf LlavaNextVideo)."""
        if item.modality == "video" and self.llava_config.pools_video_before_projector:
            features = merge.pool_video(self.llava_config, features)  # [F, Q*Q, Cv]
        return self.model.mm_projector(features)

    def finish_visual_item(self, item: MediaInput, projected: torch.Tensor) -> torch.Tensor:
        """An image's or video's projected crops / frames [k, T, D] (project_visual_item) -> rows [n, D]."""
        if item.modality == "video":
            return self.merge_video_features(projected)
        assert item.image_size is not None  # the processor sets every image's size
        return self.merge_image_features(projected, item.image_size, item.single_crop)

    def start_encoding(self, item: MediaInput, max_crops: int) -> EncodingJob:
        """`item`'s encoding as units to run one after another (arch/encoding.py)."""
        return EncodingJob(self, item, max_crops)

    def merge_image_features(self, features: torch.Tensor, size: tuple[int, int], single_crop: bool) -> torch.Tensor:
        """ORIG spatial merge of one image's crops: features [k, T, D] -> rows [n, D]."""
        cfg = self.llava_config
        rows = merge.merge_image(cfg, features, size, getattr(self.model, "image_newline", None))
        expected = layout.image_token_count(cfg, size, single_crop=single_crop)
        if rows.shape[0] != expected:
            raise layout.LayoutError(f"image rows {rows.shape[0]} != layout count {expected} for size {size}")
        return rows

    def merge_video_features(self, frames: torch.Tensor) -> torch.Tensor:
        """Pool and merge one video's projected frames [F, P*P, D] (already pooled [F, Q*Q, D] with
        `pools_video_before_projector`) -> rows [n, D]."""
        cfg = self.llava_config
        rows = merge.merge_video(
            cfg, frames, getattr(self.model, "image_newline", None), getattr(self.model, "faster_token", None)
        )
        expected = layout.video_token_count(cfg, frames.shape[0])
        if rows.shape[0] != expected:
            raise layout.LayoutError(f"video rows {rows.shape[0]} != layout count {expected} for {frames.shape[0]} frames")
        return rows

    # -- splicing ---------------------------------------------------------------------------
    def prepare_inputs_for_multimodal(
        self,
        rows: Sequence[Sequence[int]],
        items: Sequence[Sequence[EncodedItem | MediaInput]],
        padding_side: str = "left",
        spans: Sequence[tuple[int, int]] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Token ids with sentinels + each row's encoded items -> padded LM inputs.

        rows[b]: ids of row b, sentinels where items go; items[b]: row b's items in request order.
        Each sentinel takes the next item OF ITS MODALITY within its own row; a row without
        sentinels takes none. Returns inputs_embeds [B, L, D], attention_mask [B, L] (long) and
        position_ids [B, L] (0.. over real tokens, 0 on padding).

        `spans[b] = (start, end)` builds only positions start..end-1 of row b's spliced sequence
        (a prompt chunk; a boundary may fall inside an item's rows), with position ids start..end-1.
        An item whose rows lie outside every span may be given as its `MediaInput` (not encoded).
        """
        embeds, mask, positions, _ = self._assemble(rows, items, None, padding_side, spans)
        return embeds, mask, positions

    def prepare_inputs_for_training(
        self,
        rows: Sequence[Sequence[int]],
        items: Sequence[Sequence[EncodedItem]],
        labels: Sequence[Sequence[int]],
        padding_side: str | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """As `prepare_inputs_for_multimodal`, plus labels [B, L]: each row's labels (aligned with
        its ids) with IGNORE_INDEX at media rows and padding. Padding side defaults to the
        checkpoint's `tokenizer_padding_side`. Position skipping (`use_pos_skipping`) applies only
        here and only in training mode (ORIG step 9): positions become one arange(L) shared by all
        rows, shifted by a random left/right offset around a random split."""
        side = padding_side or self.llava_config.tokenizer_padding_side
        embeds, mask, positions, out_labels = self._assemble(rows, items, labels, side)
        cfg = self.llava_config
        if self.training and cfg.use_pos_skipping:
            length = embeds.shape[1]
            positions = torch.arange(length, device=embeds.device)
            split = random.randint(0, length)
            left_add = random.randint(0, cfg.pos_skipping_range)
            right_add = random.randint(left_add, cfg.pos_skipping_range)
            positions[:split] += left_add
            positions[split:] += right_add
            positions = positions[None].expand(embeds.shape[0], length).clone()
        return embeds, mask, positions, out_labels

    def _assemble(self, rows, items, labels, padding_side: str, spans=None):
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side={padding_side!r}")
        embed = self.model.embed_tokens
        device = embed.weight.device
        label_rows = labels if labels is not None else [None] * len(rows)
        row_spans = spans if spans is not None else [None] * len(rows)
        spliced = [
            self._splice_row(b, list(ids), list(row_items), row_labels, embed, device, span)
            for b, (ids, row_items, row_labels, span) in enumerate(zip(rows, items, label_rows, row_spans, strict=True))
        ]
        max_len = max(seq.shape[0] for seq, _, _ in spliced)
        batch, dim = len(spliced), embed.weight.shape[1]
        embeds = torch.zeros(batch, max_len, dim, dtype=embed.weight.dtype, device=device)
        mask = torch.zeros(batch, max_len, dtype=torch.long, device=device)
        positions = torch.zeros(batch, max_len, dtype=torch.long, device=device)
        out_labels = torch.full((batch, max_len), IGNORE_INDEX, dtype=torch.long, device=device)
        for b, (seq, row_labels, first) in enumerate(spliced):
            n = seq.shape[0]
            start = max_len - n if padding_side == "left" else 0
            embeds[b, start : start + n] = seq
            mask[b, start : start + n] = 1
            positions[b, start : start + n] = torch.arange(first, first + n, device=device)
            if row_labels is not None:
                out_labels[b, start : start + n] = row_labels
        return embeds, mask, positions, (out_labels if labels is not None else None)

    def _splice_row(self, b: int, ids: list[int], items: list, labels, embed: nn.Module, device, span=None):
        """One row -> (embeds [n, D], labels [n] or None, first position) for positions `span` (default all)."""
        if labels is not None and (len(labels) != len(ids) or span is not None):
            raise ValueError(f"row {b}: {len(labels)} labels for {len(ids)} ids" if span is None
                             else f"row {b}: labels need the whole row")
        try:  # the one pairing of sentinels with items (segments.py): the engine's block hashes use it too
            segments = split_prompt(ids, [it.sentinel for it in items], [it.num_tokens for it in items])
        except MediaMismatchError as e:
            raise MediaMismatchError(f"row {b}: {e}") from None
        total = sum(seg.num_tokens for seg in segments)
        first, end = span if span is not None else (0, total)
        if not 0 <= first < end <= total:
            raise ValueError(f"row {b}: span {span} outside its {total} positions")
        # (source, lo, hi) of every segment piece inside [first, end): source is a text run's first
        # index into ids, or a media item; lo:hi its slice
        picked: list[tuple[int | EncodedItem | MediaInput, int, int]] = []
        pos = 0
        for seg in segments:
            lo, hi = max(first, pos) - pos, min(end, pos + seg.num_tokens) - pos
            if lo < hi:
                picked.append((seg.start if isinstance(seg, TextRun) else items[seg.item], lo, hi))
            pos += seg.num_tokens
            if pos >= end:
                break
        text_ids = [t for start, lo, hi in picked if isinstance(start, int)
                    for t in ids[start + lo : start + hi]]
        text_embeds = embed(torch.tensor(text_ids, dtype=torch.long, device=device))
        pieces: list[torch.Tensor] = []
        label_pieces: list[torch.Tensor] = []
        label_tensor = torch.tensor(list(labels), dtype=torch.long, device=device) if labels is not None else None
        cursor = 0  # index into text_embeds
        for source, lo, hi in picked:
            if isinstance(source, int):
                pieces.append(text_embeds[cursor : cursor + hi - lo])
                cursor += hi - lo
                if label_tensor is not None:
                    label_pieces.append(label_tensor[source + lo : source + hi])
                continue
            if not isinstance(source, EncodedItem):
                raise ValueError(f"row {b}: a {source.modality} item inside the span is not encoded")
            pieces.append(source.features[lo:hi].to(device=device, dtype=text_embeds.dtype))
            if label_tensor is not None:
                label_pieces.append(torch.full((hi - lo,), IGNORE_INDEX, dtype=torch.long, device=device))
        embeds = torch.cat(pieces, dim=0)
        return embeds, (torch.cat(label_pieces) if label_tensor is not None else None), first
