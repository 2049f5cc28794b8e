"""Mutants of valid chat bodies (as raw request bytes) and of valid media files, all from a seeded RNG.

Chat bodies: wrong types at every field, huge, negative and non-finite numbers, deep nesting,
unicode edge cases (lone surrogates, NUL, bidi controls, placeholders and special tokens typed as
text), duplicate keys, and every content part type in every wrong place. Media files: bit flips,
truncations, chunk duplications and header field edits. The same seed gives the same mutants.
Knows nothing of the server.
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Callable
from typing import Any

TINY_PNG_URL = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ"
    "/pLvAAAAAElFTkSuQmCC"
)
WRONG_VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    1,
    2**31,
    -(2**63) - 1,
    2**64,
    10**400,
    1e308,
    -1e308,
    0.5,
    float("nan"),
    float("inf"),
    "",
    "x",
    "1",
    "null",
    [],
    [None],
    {},
    {"": None},
    [[[[]]]],
    "\u0000",
    "🙂" * 100,
]
UNICODE: list[str] = [
    "\ud800",
    "\udfff",
    "\ud83d",
    "\u0000",
    "\u202e\u2066abc",
    "\ufeff",
    "\u200b" * 50,
    "e\u0301" * 40,
    "\U0010ffff",
    "🙂" * 2000,
    "<image>",
    "<video>",
    "<audio>",
    "<|im_start|>system\nhi<|im_end|>",
    "<|endoftext|>",
    "</s>",
    "<s>[INST]",
    "\r\n" * 100,
    "%s%n%x" * 10,
    "\\u0000",
    "a" * 200_000,
]
PART_TYPES = ["text", "image_url", "video_url", "input_audio", "audio_url", "file", "refusal", "", None]


def valid_bodies(model: str) -> list[dict]:
    """Chat bodies the server answers with 200 (text, an image, streaming, n, stop, logprobs)."""
    text = {"model": model, "max_tokens": 2, "messages": [{"role": "user", "content": "Say something."}]}
    image = {
        "model": model,
        "max_tokens": 2,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": TINY_PNG_URL}},
                ],
            },
        ],
    }
    rich = {
        "model": model,
        "max_tokens": 3,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 5,
        "n": 2,
        "seed": 3,
        "stop": ["\n"],
        "logprobs": True,
        "top_logprobs": 2,
        "stream": True,
        "stream_options": {"include_usage": True},
        "presence_penalty": 0.5,
        "frequency_penalty": 0.5,
        "repetition_penalty": 1.1,
        "user": "u1",
        "messages": [
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Hi"},
            {"role": "user", "content": [{"type": "text", "text": "Again"}]},
        ],
    }
    return [text, image, rich]


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out.extend(_paths(v, (*prefix, k)))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out.extend(_paths(v, (*prefix, i)))
    return out


def _set(body: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    target = body
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return body


def _dumps(body: Any) -> bytes:
    return json.dumps(body, ensure_ascii=False, allow_nan=True).encode("utf-8", "surrogatepass")


def wrong_type(rng: random.Random, body: dict) -> bytes:
    path = rng.choice(_paths(body)[1:])
    return _dumps(_set(body, path, copy.deepcopy(rng.choice(WRONG_VALUES))))


def extreme_number(rng: random.Random, body: dict) -> bytes:
    field = rng.choice(
        [
            "max_tokens",
            "max_completion_tokens",
            "temperature",
            "top_p",
            "top_k",
            "min_p",
            "n",
            "seed",
            "top_logprobs",
            "presence_penalty",
            "frequency_penalty",
            "repetition_penalty",
        ]
    )
    body[field] = rng.choice(
        [
            -1,
            0,
            -(2**63),
            2**63,
            2**64,
            10**30,
            1e308,
            -1e308,
            1e-320,
            float("nan"),
            float("inf"),
            float("-inf"),
            2**31 - 1,
            4096,
            10**6,
        ]
    )
    return _dumps(body)


def deep_nesting(rng: random.Random, body: dict) -> bytes:
    depth = rng.choice([10, 100, 1000, 5000, 100_000])
    opener, closer = rng.choice([("[", "]"), ('{"a":', "}"), ('[{"type":"text","text":', "}]")])
    nested = opener * depth + '"x"' + closer * depth
    where = rng.choice(["content", "messages", "stop", "extra"])
    template = _dumps(body).decode("utf-8", "surrogatepass")
    if where == "content":
        return template.replace('"content": ', f'"content": {nested}, "c": ', 1).encode(
            "utf-8", "surrogatepass"
        )
    if where == "messages":
        return template.replace('"messages": ', f'"messages": {nested}, "m": ', 1).encode(
            "utf-8", "surrogatepass"
        )
    return (template[:-1] + f', "{where}": {nested}}}').encode("utf-8", "surrogatepass")


def unicode_edge(rng: random.Random, body: dict) -> bytes:
    strings = [p for p in _paths(body)[1:] if isinstance(_get(body, p), str)]
    path = rng.choice(strings) if strings else ("user",)
    text = "".join(rng.choice(UNICODE) for _ in range(rng.randint(1, 3)))
    if rng.random() < 0.3:  # as JSON escapes rather than UTF-8 bytes
        return json.dumps(_set(body, path, text), ensure_ascii=True).encode()
    return _dumps(_set(body, path, text))


def duplicate_keys(rng: random.Random, body: dict) -> bytes:
    key = rng.choice([k for k in body])
    other = rng.choice(WRONG_VALUES + [body[key]])
    text = _dumps(body).decode("utf-8", "surrogatepass")
    dup = json.dumps(key) + ": " + json.dumps(other, allow_nan=True)
    return ("{" + dup + ", " + text[1:] if rng.random() < 0.5 else text[:-1] + ", " + dup + "}").encode()


def misplaced_part(rng: random.Random, body: dict) -> bytes:
    part_type = rng.choice(PART_TYPES)
    payloads = {
        "text": "hi",
        "image_url": {"url": TINY_PNG_URL},
        "video_url": {"url": TINY_PNG_URL},
        "input_audio": {"data": "AAAA", "format": "wav"},
        "audio_url": {"url": "data:audio/wav;base64,AAAA"},
    }
    payload_key = rng.choice([*payloads, "file", "nonsense"])
    part = {"type": part_type, payload_key: copy.deepcopy(payloads.get(payload_key, {"x": 1}))}
    messages = body["messages"]
    message = rng.choice(messages)
    where = rng.randrange(6)
    if where == 0:
        message["role"] = rng.choice(["system", "assistant", "developer", "tool", "function", "", "USER"])
        message["content"] = [part]
    elif where == 1:
        message["content"] = part  # an object where a list or string belongs
    elif where == 2:
        messages.append(part)  # a part where a message belongs
    elif where == 3:
        body[rng.choice(["model", "stop", "user", "stream_options", "messages"])] = [part]
    elif where == 4:
        parts = message["content"] if isinstance(message.get("content"), list) else []
        message["content"] = [*parts, part, part]
    else:
        message["content"] = [{"type": part_type, **{k: copy.deepcopy(v) for k, v in payloads.items()}}]
    return _dumps(body)


def _get(body: Any, path: tuple) -> Any:
    for key in path:
        body = body[key]
    return body


CHAT_MUTATORS: list[Callable[[random.Random, dict], bytes]] = [
    wrong_type,
    extreme_number,
    deep_nesting,
    unicode_edge,
    duplicate_keys,
    misplaced_part,
]


def chat_mutant(rng: random.Random, model: str) -> tuple[str, bytes]:
    """One mutated body: (mutator name, request bytes)."""
    mutator = rng.choice(CHAT_MUTATORS)
    body = copy.deepcopy(rng.choice(valid_bodies(model)))
    return mutator.__name__, mutator(rng, body)


# -- media ------------------------------------------------------------------------------------------
def bit_flips(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.choice([1, 2, 4, 16, 64])):
        k = rng.randrange(len(out))
        out[k] ^= 1 << rng.randrange(8)
    return bytes(out)


def truncation(rng: random.Random, data: bytes) -> bytes:
    return data[: rng.randrange(0, len(data))]


def chunk_duplication(rng: random.Random, data: bytes) -> bytes:
    start = rng.randrange(len(data))
    end = min(len(data), start + rng.choice([4, 16, 256, 4096]))
    at = rng.randrange(len(data))
    return data[:at] + data[start:end] * rng.choice([1, 2, 8]) + data[at:]


def header_edit(rng: random.Random, data: bytes) -> bytes:
    """Overwrite 1-4 bytes in the first 128 (dimensions, lengths, counts live there) with boundary values."""
    out = bytearray(data)
    k = rng.randrange(min(128, len(out)))
    value = rng.choice(
        [
            b"\x00",
            b"\xff",
            b"\x7f",
            b"\x80",
            b"\xff\xff",
            b"\x00\x00",
            b"\x7f\xff\xff\xff",
            b"\xff\xff\xff\xff",
            b"\x00\x00\x00\x01",
            bytes([rng.randrange(256)]),
        ]
    )
    out[k : k + len(value)] = value
    return bytes(out[: len(data)])


MEDIA_MUTATORS: list[Callable[[random.Random, bytes], bytes]] = [
    bit_flips,
    truncation,
    chunk_duplication,
    header_edit,
]


def media_mutant(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    mutator = MEDIA_MUTATORS[rng.randrange(len(MEDIA_MUTATORS))]
    return mutator.__name__, mutator(rng, data)
