"""Incremental detokenisation with the demo's byte-level tokenizer: UTF-8 safety, stop strings, token bytes."""

from __future__ import annotations

from model_runtime.engine.detokenizer import IncrementalDetokenizer, TokenTexts
from tests.model_runtime.engine.conftest import run

TEXT = "naïve café — 日本語 🙂 hello world, stop here"


def stream(tokenizer, text: str, stop: tuple[str, ...] = ()) -> tuple[list[str], IncrementalDetokenizer]:
    detok = IncrementalDetokenizer(tokenizer, stop)
    deltas = []
    for token in tokenizer.encode(text, add_special_tokens=False):
        detok.add(token)
        deltas.append(detok.take())
    deltas.append(detok.take(is_final=True))
    return deltas, detok


def test_stream_deltas_never_split_a_multibyte_character(tiny_model):
    tokenizer = tiny_model.tokenizer
    ids = tokenizer.encode(TEXT, add_special_tokens=False)
    assert any("\ufffd" in tokenizer.decode([i]) for i in ids)  # the text really has split characters
    deltas, _ = stream(tokenizer, TEXT)
    assert "".join(deltas) == TEXT
    assert not any("\ufffd" in d for d in deltas)
    assert "🙂" in deltas  # four byte pieces, released as one character


def test_stop_string_across_tokens_is_cut_and_held_back(tiny_model):
    tokenizer = tiny_model.tokenizer
    # "o w" spans the tokens "h el l o" and "Ġw"
    deltas, detok = stream(tokenizer, "hello world, more", stop=("o w",))
    assert detok.stop_string == "o w"
    assert "".join(deltas) == "hell"
    assert all("o" not in d for d in deltas)  # the "o" was held until the stop matched
    # a false start is released once it can no longer match
    deltas, detok = stream(tokenizer, "hello world", stop=("o x",))
    assert detok.stop_string is None and "".join(deltas) == "hello world"
    assert any(d.startswith("o w") for d in deltas)  # "o" held back while "o x" was still possible
    # the earliest of several stop strings wins, even inside one token
    _, detok = stream(tokenizer, "hello world, stop here", stop=("stop", "ld,"))
    assert detok.text == "hello wor" and detok.stop_string == "ld,"


def test_token_texts_give_raw_bytes(tiny_model):
    tokenizer = tiny_model.tokenizer
    texts = TokenTexts(tokenizer)
    ids = tokenizer.encode(TEXT, add_special_tokens=False)
    raw = b"".join(bytes(texts.get(i)[1]) for i in ids)
    assert raw.decode("utf-8") == TEXT
    assert texts.get(ids[0]) == ("n", (110,))


def test_engine_stop_strings_and_streams(new_engine, make_request, tiny_model):
    engine = new_engine()
    full = run(engine, [make_request("f", max_tokens=16)])["f"]
    text = full.text
    # boundaries between tokens, in characters of the final text
    ends = [len(tiny_model.tokenizer.decode(full.ids[: k + 1])) for k in range(len(full.ids))]
    cut = next(b for b in ends[1:-1] if 0 < b < len(text) and text.find(text[b - 1 : b + 1]) == b - 1
               and "\ufffd" not in text[b - 1 : b + 1])
    stop = text[cut - 1 : cut + 1]  # last character of one token, first of the next
    stopped = run(engine, [make_request("s", max_tokens=16, stop=[stop])])["s"]
    assert stopped.text == text[: cut - 1]
    assert stopped.final.finish_reason == "stop" and stopped.final.stop_reason == stop
    assert len(stopped.ids) < 16
