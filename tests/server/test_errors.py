"""`from_runtime`: the one translation of the runtime's exceptions into API errors."""

from __future__ import annotations

import pytest

from model_runtime import (
    EngineDeadError,
    EngineDrainingError,
    GrammarError,
    InvalidMediaError,
    InvalidPromptError,
    LayoutError,
    RequestInputError,
    SamplingParamsError,
)
from server.errors import (
    INTERNAL_MESSAGE,
    InternalError,
    InvalidImage,
    InvalidRequest,
    NotReady,
    ShuttingDown,
    from_runtime,
)


@pytest.mark.parametrize("cls", [InvalidPromptError, InvalidMediaError, LayoutError, GrammarError])
def test_the_runtime_input_errors_are_request_input_errors(cls):
    assert issubclass(cls, RequestInputError)
    error = from_runtime(cls("two placeholders but one item"), "messages", "the messages: ")
    assert isinstance(error, InvalidRequest) and error.status == 400
    assert (error.message, error.param) == ("the messages: two placeholders but one item", "messages")


def test_a_sampling_error_names_its_own_field():
    error = from_runtime(SamplingParamsError("top_p", "2: must be in (0, 1]"), "ignored")
    assert (error.message, error.param) == ("top_p: 2: must be in (0, 1]", "top_p")


def test_a_media_code_picks_the_media_error_and_only_the_first_line_is_kept():
    error = from_runtime(InvalidMediaError("no frames\n  at a library's frame"), "image_url", "the image: ",
                         code="invalid_image")
    assert isinstance(error, InvalidImage) and error.message == "the image: no frames"


def test_an_engine_that_drains_or_died_is_a_503():
    assert isinstance(from_runtime(EngineDrainingError("x")), ShuttingDown)
    dead = from_runtime(EngineDeadError("x"))
    assert isinstance(dead, NotReady) and dead.status == 503


@pytest.mark.parametrize("error", [ValueError("secret /srv/x.py"), KeyError("secret"), RuntimeError("secret")])
def test_anything_else_is_a_500_that_says_nothing_of_it(error):
    api = from_runtime(error, "messages", "the messages: ")
    assert isinstance(api, InternalError) and api.status == 500 and api.param is None
    assert api.message == INTERNAL_MESSAGE and "secret" not in api.json_bytes().decode()
