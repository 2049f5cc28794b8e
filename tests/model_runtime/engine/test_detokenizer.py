"""Incremental detokenisation with the demo's byte-level tokenizer: UTF-8 safety, stop strings, token bytes."""

from __future__ import annotations

import json

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, trainers
from transformers import PreTrainedTokenizerFast

from model_runtime.engine.detokenizer import IncrementalDetokenizer, TokenTexts, is_incomplete_utf8
from tests.model_runtime.engine.conftest import run

TEXT = "naïve café — 日本語 🙂 hello world, stop here"


def stream(tokenizer, text: str, stop: tuple[str, ...] = ()) -> tuple[list[str], IncrementalDetokenizer]:
    return _stream_ids(tokenizer, tokenizer.encode(text, add_special_tokens=False), stop)


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
    stopped = run(engine, [make_request("s", max_tokens=16, stop=(stop,))])["s"]
    assert stopped.text == text[: cut - 1]
    assert stopped.final.finish_reason == "stop" and stopped.final.stop_reason == stop
    assert len(stopped.ids) < 16


# -- text fidelity: the joined deltas are the decode of the ids, for every way a choice ends --
def _stream_ids(tokenizer, ids: list[int], stop: tuple[str, ...] = ()) -> tuple[list[str], IncrementalDetokenizer]:
    detok = IncrementalDetokenizer(tokenizer, stop)
    deltas = []
    for token in ids:
        detok.add(token)
        deltas.append(detok.take())
    deltas.append(detok.take(is_final=True))
    return deltas, detok


def test_a_character_cut_by_the_end_of_the_choice_is_kept(tiny_model):
    tokenizer = tiny_model.tokenizer
    ids = tokenizer.encode("ok 🙂", add_special_tokens=False)
    pieces = [bytes(TokenTexts(tokenizer).get(i)[1]) for i in ids]
    cut = next(k for k in range(1, len(ids)) if not _decodes(b"".join(pieces[:k])))  # inside the emoji
    deltas, _ = _stream_ids(tokenizer, ids[:cut])
    assert "".join(deltas) == tokenizer.decode(ids[:cut])
    assert "".join(deltas).endswith("\ufffd") and deltas[-1].endswith("\ufffd")  # released at the end


def test_invalid_bytes_are_released_at_once_not_held(tiny_model):
    tokenizer = tiny_model.tokenizer
    texts = TokenTexts(tokenizer)
    by_bytes = {bytes(texts.get(i)[1]): i for i in range(len(tokenizer))}
    lone = next(i for b, i in by_bytes.items() if len(b) == 1 and 0x80 <= b[0] <= 0xBF)  # a stray continuation
    ids = [lone, lone, lone, lone, lone]
    deltas, _ = _stream_ids(tokenizer, ids)
    assert deltas[0] == "\ufffd"  # no later byte can complete it: not held back
    assert "".join(deltas) == tokenizer.decode(ids)


def test_a_lead_byte_is_held_only_while_it_can_complete(tiny_model):
    tokenizer = tiny_model.tokenizer
    texts = TokenTexts(tokenizer)
    ids = tokenizer.encode("日", add_special_tokens=False)  # three bytes
    raw = [bytes(texts.get(i)[1]) for i in ids]
    ascii_id = tokenizer.encode("a", add_special_tokens=False)[0]
    first = next(k for k in range(1, len(ids) + 1) if len(b"".join(raw[:k])) < 3 and b"".join(raw[:k])[0] >= 0xE0)
    # the start of 日, then "a": the character can no longer complete, both are released together
    deltas, _ = _stream_ids(tokenizer, [*ids[:first], ascii_id, ascii_id])
    assert deltas[:first] == [""] * first
    assert deltas[first] == "\ufffda"
    assert "".join(deltas) == tokenizer.decode([*ids[:first], ascii_id, ascii_id])


def test_random_ids_stream_exactly_their_decode(tiny_model):
    """A third of the demo vocabulary is partial UTF-8: random ids are the hard case."""
    tokenizer = tiny_model.tokenizer
    gen = torch.Generator().manual_seed(0)
    special = set(tokenizer.all_special_ids)
    vocab = [i for i in range(len(tokenizer)) if i not in special]
    for n in range(1, 40):
        ids = [vocab[j] for j in torch.randint(len(vocab), (n,), generator=gen).tolist()]
        deltas, _ = _stream_ids(tokenizer, ids)
        assert "".join(deltas) == tokenizer.decode(ids), ids
        # a stop string that is in the text still cuts it there
        text = tokenizer.decode(ids)
        if len(text) > 4 and "\ufffd" not in text[2:4]:
            deltas, detok = _stream_ids(tokenizer, ids, stop=(text[2:4],))
            assert "".join(deltas) == text[: text.find(text[2:4])] and detok.stop_string == text[2:4]


def _decodes(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@pytest.mark.parametrize(
    ("data", "incomplete"),
    [(b"a", False), (b"\xe4", True), (b"\xe4\xbd", True), (b"\xe4\xbd\xa0", False), (b"\xf0\x9f\x99", True),
     (b"\xf0\x9f\x99\x82", False), (b"\xa0", False), (b"\xc0", False), (b"\xed\xa0", False), (b"\xe0\x80", False),
     (b"x\xff", False), (b"\xc3", True), (b"\xf4\x8f", True), (b"\xf4\x90", False)],
)
def test_incomplete_utf8(data, incomplete):
    assert is_incomplete_utf8(data) is incomplete


# -- logprob bytes: the tokenizer's own bytes for every id, byte-level and SentencePiece ------
LATIN = "anó café niño façade über señor naïve àéîõü ß æøå ÿ " * 6


@pytest.fixture(scope="module")
def sentencepiece_tokenizer() -> PreTrainedTokenizerFast:
    """Llama/Mistral-style: "▁" word marker, byte-fallback pieces <0x00>..<0xFF> in the vocabulary
    (not added tokens), and merged pieces made only of Latin-1 letters such as `anó`."""
    trained = Tokenizer(models.BPE(unk_token="<unk>"))
    trained.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    trained.train_from_iterator([LATIN, "hello world 日本語"] * 10,
                                trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
                                                    show_progress=False))
    spec = json.loads(trained.to_str())["model"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}
    for piece in spec["vocab"]:
        vocab.setdefault(piece, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in spec["merges"]]
    tok = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True))
    tok.normalizer = trained.normalizer
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def test_sentencepiece_latin1_pieces_are_characters_not_bytes(sentencepiece_tokenizer):
    tokenizer = sentencepiece_tokenizer
    texts = TokenTexts(tokenizer)
    latin = [p for p in tokenizer.get_vocab() if "\u2581" not in p and any("\x80" <= c <= "\xff" for c in p)
             and all(c <= "\xff" for c in p) and len(p) > 1]
    assert latin, "the vocabulary has merged Latin-1 pieces"
    piece = latin[0]
    assert texts.get(tokenizer.convert_tokens_to_ids(piece)) == (piece, tuple(piece.encode("utf-8")))
    # every id: its bytes decode to the tokenizer's own text for it; ids in a row, to their decode
    anchor = tokenizer.convert_tokens_to_ids("<0x41>")  # "A": keeps the decoder's leading-space strip away
    for i in range(len(tokenizer)):
        if i in tokenizer.all_special_ids:
            continue
        expected = tokenizer.decode([anchor, i], skip_special_tokens=True)[1:]
        if not 0x80 <= i - 3 <= 0xFF:  # a lone byte piece of a multi-byte character decodes to U+FFFD
            assert bytes(texts.get(i)[1]).decode("utf-8") == expected, (i, tokenizer.convert_ids_to_tokens(i))
    ids = tokenizer.encode(LATIN + "日本語 🙂", add_special_tokens=False)
    assert b"".join(texts.bytes(i) for i in ids).decode("utf-8").strip() == tokenizer.decode(ids).strip()
    deltas, _ = _stream_ids(tokenizer, ids)
    assert "".join(deltas) == tokenizer.decode(ids)


def test_byte_level_bytes_for_every_id(tiny_model):
    tokenizer = tiny_model.tokenizer
    texts = TokenTexts(tokenizer)
    for i in range(len(tokenizer)):
        if i not in tokenizer.all_special_ids:
            assert bytes(texts.get(i)[1]).decode("utf-8", errors="replace") == tokenizer.decode([i])
