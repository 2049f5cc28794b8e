"""Host-side inputs for one request: chat turns -> prompt ids, decoded media -> tensors + token counts.

`Processor` is built once per checkpoint (config, tokenizer, template). Its outputs are what the
engine needs to run a request and what the server needs to charge it, computed before the model
sees anything: prompt ids with sentinels, and per media item the tensors and the exact number of
feature rows (`layout.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from model_runtime.arch import layout
from model_runtime.config import LlavaConfig
from model_runtime.inputs import MediaInput
from model_runtime.processing.conversation import ChatTurn, ConversationTemplate
from model_runtime.processing.image import ImagePreprocessor
from model_runtime.processing.prompt import contains_placeholder, tokenize_prompt


class InvalidPromptError(ValueError):
    """User text the prompt builder must refuse (placeholders or special tokens typed as text)."""


@dataclass(frozen=True)
class PromptInput:
    """Prompt ids with one sentinel per media item, and the token accounting."""

    token_ids: list[int]  # real ids + sentinels
    num_text_tokens: int  # real ids only
    num_media_tokens: int  # sum of the items' feature rows

    @property
    def num_tokens(self) -> int:
        return self.num_text_tokens + self.num_media_tokens


class Processor:
    def __init__(self, cfg: LlavaConfig, tokenizer, template: ConversationTemplate) -> None:
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.template = template
        self.images = ImagePreprocessor(cfg)
        self._special_strings = tuple(
            s for s in getattr(tokenizer, "all_special_tokens", ()) if s
        ) + tuple(t.content for t in tokenizer.added_tokens_decoder.values())

    def check_user_text(self, text: str) -> None:
        """Refuse text that would be read as media or as control tokens."""
        if contains_placeholder(text):
            raise InvalidPromptError("text must not contain media placeholders such as <image>")
        for special in self._special_strings:
            if special in text:
                raise InvalidPromptError(f"text must not contain the special token {special}")

    def process_image(self, image: Image.Image, single_crop: bool) -> MediaInput:
        image = image.convert("RGB") if image.mode != "RGB" else image
        return MediaInput(
            modality="image",
            data=self.images.process(image, single_crop),
            image_size=image.size,
            single_crop=single_crop,
            num_tokens=layout.image_token_count(self.cfg, image.size, single_crop=single_crop),
        )

    def build_prompt(self, turns: list[ChatTurn], media: list[MediaInput]) -> PromptInput:
        text = self.template.render(turns)
        ids = tokenize_prompt(text, self.tokenizer)
        num_text = sum(1 for t in ids if t >= 0)
        return PromptInput(
            token_ids=ids, num_text_tokens=num_text, num_media_tokens=sum(m.num_tokens for m in media)
        )
