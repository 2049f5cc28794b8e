"""Grammar engines for constrained decoding, compared on this CPU: xgrammar, llguidance, outlines-core.

For each engine that is installed: the time to compile a 20-field JSON schema for a 151,643-token
byte-level BPE vocabulary (the realistic demo's, Qwen2-sized), the time to make its first mask,
and the per-step cost of a decode step (fill the allowed-token mask, then accept one token) while
generating a valid instance of the schema token by token. Prints a table.

    .venv/bin/python bench/grammar_bench.py [--vocab 151643] [--steps 200]

The engines are not dependencies of llava-serve except the one it uses (llguidance);
`pip install xgrammar outlines-core` to compare the others.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerFast

from model_runtime.checkpoint_tools.demo import build_tokenizer, save_tokenizer
from model_runtime.engine.detokenizer import TokenTexts

CACHE = Path(tempfile.gettempdir()) / "llava-serve-grammar-bench"


def schema_20_fields() -> dict:
    """An invoice-like object: 20 required fields of every JSON type, an enum, bounds, an array of objects."""
    props: dict = {}
    for i in range(5):
        props[f"name_{i}"] = {"type": "string", "maxLength": 40}
    for i in range(4):
        props[f"count_{i}"] = {"type": "integer", "minimum": 0, "maximum": 1000}
    for i in range(3):
        props[f"amount_{i}"] = {"type": "number"}
    for i in range(3):
        props[f"flag_{i}"] = {"type": "boolean"}
    props["currency"] = {"enum": ["EUR", "USD", "GBP", "JPY"]}
    props["date"] = {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}$"}
    props["tags"] = {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 4}
    props["lines"] = {
        "type": "array",
        "maxItems": 3,
        "items": {
            "type": "object",
            "properties": {"sku": {"type": "string"}, "qty": {"type": "integer"}},
            "required": ["sku", "qty"],
            "additionalProperties": False,
        },
    }
    props["note"] = {"anyOf": [{"type": "string"}, {"type": "null"}]}
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


def instance() -> dict:
    out: dict = {f"name_{i}": f"Alpha Beta {i}" for i in range(5)}
    out |= {f"count_{i}": 17 * i for i in range(4)}
    out |= {f"amount_{i}": 12.5 * (i + 1) for i in range(3)}
    out |= {f"flag_{i}": i % 2 == 0 for i in range(3)}
    out |= {
        "currency": "EUR",
        "date": "2026-12-06",
        "tags": ["a", "bb"],
        "lines": [{"sku": "X-1", "qty": 2}, {"sku": "Y-22", "qty": 1}],
        "note": None,
    }
    return out


def load_tokenizer(vocab: int) -> PreTrainedTokenizerFast:
    folder = CACHE / f"bpe-{vocab}"
    if not (folder / "tokenizer.json").exists():
        folder.mkdir(parents=True, exist_ok=True)
        save_tokenizer(build_tokenizer(vocab, 0), folder)
    tok = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), eos_token="<|im_end|>")
    return tok


class Timer:
    def __init__(self) -> None:
        self.samples: list[float] = []

    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.samples.append(time.perf_counter() - self.start)


def _report(name: str, compile_s: float, first_s: float, steps: list[float], n: int) -> dict:
    steps_us = sorted(s * 1e6 for s in steps)
    return {
        "engine": name,
        "compile_ms": compile_s * 1e3,
        "first_mask_ms": first_s * 1e3,
        "step_median_us": statistics.median(steps_us),
        "step_p99_us": steps_us[int(0.99 * (len(steps_us) - 1))],
        "steps": len(steps_us),
        "tokens": n,
    }


def bench_llguidance(tok, schema: dict, ids: list[int], vocab: int) -> dict:
    import llguidance
    import llguidance.hf
    import llguidance.torch

    ll_tok = llguidance.hf.from_tokenizer(tok, n_vocab=vocab)
    start = time.perf_counter()
    grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema))
    matcher = llguidance.LLMatcher(ll_tok, grammar)
    compile_s = time.perf_counter() - start
    mask = llguidance.torch.allocate_token_bitmask(1, vocab)
    start = time.perf_counter()
    llguidance.torch.fill_next_token_bitmask(matcher, mask, 0)
    first_s = time.perf_counter() - start
    steps = []
    for i, t in enumerate(ids):
        with Timer() as timer:
            if i:
                llguidance.torch.fill_next_token_bitmask(matcher, mask, 0)
            ok = matcher.consume_token(t)
        steps.append(timer.samples[0])
        assert ok and not matcher.is_error(), matcher.get_error()
    return _report(f"llguidance {version('llguidance')}", compile_s, first_s, steps[1:], len(ids))


def bench_xgrammar(tok, schema: dict, ids: list[int], vocab: int) -> dict:
    import xgrammar as xgr

    info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=vocab)
    compiler = xgr.GrammarCompiler(info, max_threads=2, cache_enabled=False)
    start = time.perf_counter()
    compiled = compiler.compile_json_schema(json.dumps(schema), strict_mode=True)
    matcher = xgr.GrammarMatcher(compiled)
    compile_s = time.perf_counter() - start
    mask = xgr.allocate_token_bitmask(1, info.vocab_size)
    start = time.perf_counter()
    matcher.fill_next_token_bitmask(mask, 0)
    first_s = time.perf_counter() - start
    steps = []
    for i, t in enumerate(ids):
        with Timer() as timer:
            if i:
                matcher.fill_next_token_bitmask(mask, 0)
            ok = matcher.accept_token(t)
        steps.append(timer.samples[0])
        assert ok
    return _report(f"xgrammar {version('xgrammar')}", compile_s, first_s, steps[1:], len(ids))


def bench_outlines_core(tok, schema: dict, ids: list[int], vocab: int) -> dict:
    from outlines_core import Guide, Index, Vocabulary
    from outlines_core.json_schema import build_regex_from_schema

    texts = TokenTexts(tok)
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    table: dict[bytes, list[int]] = {}
    specials = set(tok.all_special_ids) | {t for t in tok.added_tokens_decoder}
    for i in range(len(tok)):
        if i not in specials:
            table.setdefault(texts.bytes(i), []).append(i)
    start = time.perf_counter()
    index = Index(build_regex_from_schema(json.dumps(schema)), Vocabulary(eos, table))
    guide = Guide(index)
    compile_s = time.perf_counter() - start
    mask = torch.zeros((vocab + 31) // 32, dtype=torch.int32)
    start = time.perf_counter()
    guide.write_mask_into(mask.data_ptr(), mask.numel(), mask.element_size())
    first_s = time.perf_counter() - start
    steps = []
    for i, t in enumerate(ids[:-1]):  # its final state accepts EOS without advancing on it
        with Timer() as timer:
            if i:
                guide.write_mask_into(mask.data_ptr(), mask.numel(), mask.element_size())
            guide.advance(t)
        steps.append(timer.samples[0])
    assert guide.is_finished()
    return _report(f"outlines-core {version('outlines-core')}", compile_s, first_s, steps[1:], len(ids))


ENGINES = {"llguidance": bench_llguidance, "xgrammar": bench_xgrammar, "outlines-core": bench_outlines_core}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--vocab", type=int, default=151643, help="byte-level BPE entries (before the specials)"
    )
    parser.add_argument("--engines", nargs="*", default=list(ENGINES))
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    tok = load_tokenizer(args.vocab)
    vocab = len(tok)
    print(f"tokenizer: {vocab} tokens ({time.perf_counter() - start:.1f} s to load or build)")
    schema = schema_20_fields()
    text = json.dumps(instance())
    ids = tok.encode(text, add_special_tokens=False) + [tok.convert_tokens_to_ids("<|im_end|>")]
    rows = []
    for name in args.engines:
        try:
            rows.append(ENGINES[name](tok, schema, ids, vocab))
        except ImportError:
            print(f"{name}: not installed")
    print(
        f"\n{'engine':<22} {'compile ms':>11} {'1st mask ms':>12} {'step median us':>15} {'step p99 us':>12}"
    )
    for r in rows:
        print(
            f"{r['engine']:<22} {r['compile_ms']:>11.1f} {r['first_mask_ms']:>12.2f} "
            f"{r['step_median_us']:>15.1f} {r['step_p99_us']:>12.1f}"
        )
    print(f"\n{len(ids)} tokens of a 20-field instance per engine; a step = fill the mask + accept the token")


if __name__ == "__main__":
    main()
