"""Grammar-constrained decoding on llguidance: compiled grammars, per-row matchers, allowed-token masks.

`GrammarCompiler` is built once per checkpoint (its tokenizer, the logits' width, the EOS ids);
`compile(spec)` checks a `GrammarSpec` (a JSON schema, any JSON object, a regex, a choice of
strings or a Lark grammar) and caches the result per spec, so a schema is compiled once; it is
thread-safe and meant to run off the engine thread (the server compiles at admission). Each
sequence gets its own `GrammarMatcher`; `refused_tokens` computes the tokens several rows may not
take next, at once (in parallel, without the GIL), as a bool mask. A finished grammar allows only EOS.
Knows nothing of HTTP or of the engine's rows.
"""

from __future__ import annotations

import functools
import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import llguidance
import llguidance.hf
import numpy as np
import torch

from model_runtime.errors import RequestInputError

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions

GRAMMAR_KINDS = ("json_schema", "json_object", "regex", "choice", "lark")
CACHE_SIZE = 256  # compiled grammars kept (least recently used dropped)
MAX_GRAMMAR_CHARS = 1 << 20  # characters of a spec's source, at most
# JSON as json.dumps writes it: no free whitespace (a model cannot pad forever), ", " and ": "
JSON_OPTIONS: JsonCompileOptions = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class GrammarError(RequestInputError):
    """A grammar that cannot be enforced: malformed, or using features the engine does not support."""


@dataclass(frozen=True)
class GrammarSpec:
    """What the output must match: `kind` is one of GRAMMAR_KINDS; `source` the schema (JSON text),
    the regex, the choices (a JSON list of strings) or the Lark grammar; ignored for json_object."""

    kind: str
    source: str = ""

    def __post_init__(self) -> None:
        if self.kind not in GRAMMAR_KINDS:
            raise GrammarError(f"grammar kind {self.kind!r}: expected one of {', '.join(GRAMMAR_KINDS)}")
        if len(self.source) > MAX_GRAMMAR_CHARS:
            raise GrammarError(f"the grammar is {len(self.source)} characters; at most {MAX_GRAMMAR_CHARS}")


@dataclass(frozen=True)
class CompiledGrammar:
    """A checked grammar for one tokenizer; `matcher()` starts a row on it."""

    spec: GrammarSpec
    grammar: str  # llguidance's serialized grammar
    tokenizer: llguidance.LLTokenizer
    vocab_size: int  # the logits' width it was compiled for

    def matcher(self) -> GrammarMatcher:
        return GrammarMatcher(
            llguidance.LLMatcher(self.tokenizer, self.grammar, log_level=0), self.vocab_size
        )


class GrammarMatcher:
    """One row's position in its grammar: which tokens may come next, and the tokens taken so far."""

    def __init__(self, matcher: llguidance.LLMatcher, vocab_size: int) -> None:
        self.matcher = matcher
        self.vocab_size = vocab_size

    def accept(self, token_id: int) -> bool:
        """Advance on a sampled token; False if the grammar does not allow it."""
        return bool(self.matcher.consume_token(token_id)) and not self.matcher.is_error()

    @property
    def is_finished(self) -> bool:
        """The grammar is complete and took EOS, or can take nothing more."""
        return bool(self.matcher.is_stopped())

    @property
    def error(self) -> str | None:
        return self.matcher.get_error() or None if self.matcher.is_error() else None


class GrammarCompiler:
    def __init__(self, tokenizer, vocab_size: int, eos_token_ids: Sequence[int]) -> None:
        """`vocab_size`: the logits' width (may exceed the tokenizer's; those ids are never allowed).
        Takes about a second for a 150k vocabulary: build one per checkpoint."""
        eos = sorted(set(eos_token_ids))
        self.vocab_size = vocab_size
        self.tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size, eos_token=eos)
        self._cache: OrderedDict[GrammarSpec, CompiledGrammar] = OrderedDict()
        self._lock = threading.Lock()

    def compile(self, spec: GrammarSpec) -> CompiledGrammar:
        with self._lock:
            hit = self._cache.get(spec)
            if hit is not None:
                self._cache.move_to_end(spec)
                return hit
        compiled = CompiledGrammar(spec, self._check(_grammar(spec)), self.tokenizer, self.vocab_size)
        with self._lock:
            self._cache[spec] = compiled
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return compiled

    def _check(self, grammar: str) -> str:
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, self.tokenizer)
        if is_error:
            raise GrammarError("; ".join(messages) or "the grammar is not valid")
        return grammar


def refused_tokens(matchers: Sequence[GrammarMatcher], vocab_size: int) -> torch.Tensor:
    """Which tokens each matcher's grammar does NOT allow next: [R, vocab_size] bool, on the CPU.
    `vocab_size` is the logits' width; ids past the compiler's vocabulary are always refused."""
    own = matchers[0].vocab_size
    assert all(m.vocab_size == own for m in matchers), "matchers of one compiler"
    width = (own + 31) // 32
    masks = torch.zeros(
        (len(matchers), width), dtype=torch.int32
    )  # packed bits: token t is bit t % 32 of word t // 32
    if len(matchers) == 1:
        matchers[0].matcher.unsafe_compute_mask_ptr(masks.data_ptr(), width * 4)
    else:
        _executor().unsafe_compute_mask_ptr(
            [(m.matcher, i) for i, m in enumerate(matchers)], masks.data_ptr(), width * 4, len(matchers)
        )
    # little-endian words: byte k of a row holds tokens 8k..8k+7, its bit j token 8k+j
    refused = np.unpackbits(
        np.invert(masks.numpy()).view(np.uint8), axis=1, bitorder="little"
    )  # [R, W * 32] 0/1
    if refused.shape[1] < vocab_size:
        refused = np.pad(refused, ((0, 0), (0, vocab_size - refused.shape[1])), constant_values=1)
    return torch.from_numpy(refused).view(torch.bool)[:, :vocab_size]


@functools.cache
def _executor() -> llguidance.LLExecutor:
    return llguidance.LLExecutor()  # threads that fill several rows' masks at once, without the GIL


def _grammar(spec: GrammarSpec) -> str:
    try:
        if spec.kind == "json_object":
            return llguidance.LLMatcher.grammar_from_json_schema({"type": "object"}, defaults=JSON_OPTIONS)
        if spec.kind == "json_schema":
            return llguidance.LLMatcher.grammar_from_json_schema(spec.source, defaults=JSON_OPTIONS)
        if spec.kind == "regex":
            return llguidance.LLMatcher.grammar_from_regex(spec.source)
        if spec.kind == "choice":  # the strings themselves, not JSON strings
            choices = json.loads(spec.source)
            return llguidance.LLMatcher.grammar_from_lark(
                "start: " + " | ".join(json.dumps(c) for c in choices)
            )
        return llguidance.LLMatcher.grammar_from_lark(spec.source)
    except (ValueError, TypeError) as e:
        raise GrammarError(str(e)) from e
