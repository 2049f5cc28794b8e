"""Incremental detokenisation: complete UTF-8 characters only, stop strings across token boundaries.

`IncrementalDetokenizer` decodes a short window of recent ids per token (never the whole output),
waits while the tail is the start of a multi-byte character that later bytes can still complete
(at most 3 bytes), finds stop strings anywhere in the text (also when split over several tokens)
and holds back a tail that could still become a stop string. At the end of a choice everything
held back is released, so the joined deltas are the tokenizer's decode of the generated ids
(U+FFFD where bytes are invalid or cut), whatever the finish reason. `TokenTexts` gives each
token's own text and raw bytes for logprobs. Knows a tokenizer, not the model.
"""

from __future__ import annotations

import builtins
import json
import re
from collections.abc import Callable

_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # SentencePiece byte fallback pieces


class IncrementalDetokenizer:
    def __init__(self, tokenizer, stop: tuple[str, ...] = (), skip_special_tokens: bool = True,
                 token_bytes: Callable[[int], bytes] | None = None) -> None:
        self.tokenizer = tokenizer
        self._token_bytes = token_bytes  # None: a TokenTexts of the tokenizer, made when first needed
        self.stop = stop
        self.skip_special_tokens = skip_special_tokens
        self.max_stop_len = max((len(s) for s in stop), default=0)
        self.ids: list[int] = []
        self.text = ""  # all complete text so far (cut at a matched stop string)
        self.stop_string: str | None = None  # the stop string that matched
        self._prefix_offset = 0  # ids[prefix:read] decode to text already counted
        self._read_offset = 0
        self._num_emitted = 0  # characters of `text` returned by take()

    def add(self, token_id: int) -> None:
        """Append one generated token (not called for stop tokens: they carry no text)."""
        if self.stop_string is not None:
            return
        self.ids.append(token_id)
        self._release()

    def take(self, is_final: bool = False) -> str:
        """Text not returned yet; withholds a tail that may start a stop string unless final. The
        final take also releases a cut character (as U+FFFD): the choice ends there."""
        if is_final and self.stop_string is None:
            self._release(final=True)
        end = len(self.text)
        if not is_final and self.stop_string is None:
            end -= self._num_held_back()
        if end <= self._num_emitted:
            return ""
        delta = self.text[self._num_emitted : end]
        self._num_emitted = end
        return delta

    def _release(self, final: bool = False) -> None:
        """Decode the ids not released yet into `text`; unless final, wait while the last character
        may still be completed by the next bytes."""
        # NOTE: decoding a window (not one id) keeps tokenizers that strip a leading space or merge
        # byte pieces right: the window's prefix is decoded the same way and subtracted.
        decode = self.tokenizer.decode
        skip = self.skip_special_tokens
        prefix = decode(self.ids[self._prefix_offset : self._read_offset], skip_special_tokens=skip)
        full = decode(self.ids[self._prefix_offset :], skip_special_tokens=skip)
        if len(full) <= len(prefix) or (not final and full.endswith("\ufffd") and self._may_complete()):
            return
        self._prefix_offset = self._read_offset
        self._read_offset = len(self.ids)
        new = full[len(prefix) :]
        self.text += new
        if self.stop:
            self._find_stop(len(new))

    def _may_complete(self) -> bool:
        """Whether the ids not yet released end inside a multi-byte character that more bytes can
        still complete; U+FFFD from invalid bytes, or a real U+FFFD, is released at once."""
        if self._token_bytes is None:
            self._token_bytes = TokenTexts(self.tokenizer).bytes
        tail = b"".join(self._token_bytes(i) for i in self.ids[self._read_offset :])
        return is_incomplete_utf8(tail)

    def _find_stop(self, num_new: int) -> None:
        start = max(0, len(self.text) - num_new - self.max_stop_len + 1)
        found: tuple[int, str] | None = None
        for s in self.stop:
            i = self.text.find(s, start)
            if i != -1 and (found is None or i < found[0]):
                found = (i, s)
        if found is not None:
            self.text = self.text[: found[0]]
            self.stop_string = found[1]

    def _num_held_back(self) -> int:
        for k in range(min(self.max_stop_len - 1, len(self.text)), 0, -1):
            tail = self.text[-k:]
            if any(s.startswith(tail) for s in self.stop):
                return k
        return 0


class TokenTexts:
    """Each token's own text and raw bytes (OpenAI logprobs `token` / `bytes`), cached per id."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self._byte_of_char = _byte_level_alphabet() if is_byte_level(tokenizer) else None
        self._cache: dict[int, tuple[str, tuple[int, ...]]] = {}

    def bytes(self, token_id: int) -> bytes:
        return bytes(self.get(token_id)[1])

    def get(self, token_id: int) -> tuple[str, tuple[int, ...]]:
        hit = self._cache.get(token_id)
        if hit is None:
            raw = self._bytes(token_id)
            hit = (raw.decode("utf-8", errors="replace"), tuple(raw))
            self._cache[token_id] = hit
        return hit

    def _bytes(self, token_id: int) -> builtins.bytes:
        piece = self.tokenizer.convert_ids_to_tokens(token_id)
        if piece is None:
            return b""
        match = _BYTE_TOKEN.fullmatch(piece)
        if match:
            return bytes([int(match.group(1), 16)])
        if self._byte_of_char is not None and all(c in self._byte_of_char for c in piece):
            # byte-level BPE (GPT-2 / Qwen2): each character stands for one byte
            return bytes(self._byte_of_char[c] for c in piece)
        return piece.replace("\u2581", " ").encode("utf-8")  # SentencePiece word boundary; added tokens


def is_byte_level(tokenizer) -> bool:
    """Whether the vocabulary is byte-level BPE (its decoder maps characters back to bytes), as
    GPT-2, Llama 3 and Qwen2 are; SentencePiece vocabularies (Llama 2, Mistral, Vicuna) are not,
    and their pieces of Latin-1 letters (`anó`) are characters, not bytes."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None)
    if decoder is not None:
        return _has_type(json.loads(decoder.__getstate__()), "ByteLevel")
    vocab = tokenizer.get_vocab()  # a slow tokenizer: byte-level iff its pieces use GPT-2's space
    return "\u0120" in "".join(list(vocab)[:5000]) and not any(p.startswith("\u2581") for p in vocab)


def _has_type(spec, name: str) -> bool:
    if isinstance(spec, dict):
        return spec.get("type") == name or any(_has_type(v, name) for v in spec.values())
    if isinstance(spec, list):
        return any(_has_type(v, name) for v in spec)
    return False


def is_incomplete_utf8(data: bytes) -> bool:
    """Whether `data` ends with the first bytes of a valid multi-byte UTF-8 character."""
    for back in range(1, min(3, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0x80:
            continue  # a continuation byte: its lead is further back
        need = 2 if 0xC2 <= byte <= 0xDF else 3 if 0xE0 <= byte <= 0xEF else 4 if 0xF0 <= byte <= 0xF4 else 0
        # some continuation completes it (the second byte's range depends on the lead: try each)
        return need > back and any(_valid(data[-back:] + bytes([fill]) * (need - back)) for fill in (0x80, 0x90, 0xA0))
    return False


def _valid(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _byte_level_alphabet() -> dict[str, int]:
    """Byte-level BPE's printable stand-in for each byte value (GPT-2's published mapping)."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1), *range(ord("\xae"), 256)]
    char_of_byte = {b: chr(b) for b in kept}
    shifted = 0
    for b in range(256):
        if b not in char_of_byte:
            char_of_byte[b] = chr(256 + shifted)
            shifted += 1
    return {c: b for b, c in char_of_byte.items()}
