"""Two server processes sharing one PostgreSQL state database (a real server the test starts): a
response created on one replica, with an image, is readable, listable, chainable and deletable on
the other, for its own key only."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from testkit.postgres import PostgresServer
from tests.conftest import png_data_url, random_image
from tests.e2e.conftest import API_KEYS, ServerProcess, start_server, stop_server

pytestmark = pytest.mark.xdist_group("replicas")


@pytest.fixture(scope="module")
def replicas(tiny_checkpoint, tmp_path_factory) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    postgres = PostgresServer().start()
    url = postgres.new_database()
    keys = [arg for key in API_KEYS for arg in ("--api-key", key)]
    started: list[ServerProcess] = []
    try:
        for name in ("a", "b"):
            started.append(start_server(tiny_checkpoint, tmp_path_factory.mktemp(f"replica-{name}"),
                                        "--state-db", url, *keys))
        yield started[0], started[1]
    finally:
        for s in started:
            stop_server(s)
        postgres.stop()


def test_a_response_made_on_one_replica_is_read_and_continued_on_the_other(replicas):
    a, b = (s.client(api_key=API_KEYS[0]) for s in replicas)
    stranger = replicas[1].client(api_key=API_KEYS[1])
    url = png_data_url(random_image(50, 40, seed=6))
    first = a.responses.create(model="tiny", max_output_tokens=3, temperature=0, input=[
        {"role": "user", "content": [{"type": "input_image", "image_url": url},
                                     {"type": "input_text", "text": "What is it?"}]}])
    assert b.responses.retrieve(first.id).output_text == first.output_text
    assert [i.type for i in b.responses.input_items.list(first.id).data] == ["message"]
    second = b.responses.create(model="tiny", previous_response_id=first.id, input="More?", max_output_tokens=3,
                                temperature=0)
    assert second.usage.input_tokens > first.usage.input_tokens
    assert second.usage.input_tokens_details.image_tokens == first.usage.input_tokens_details.image_tokens
    with pytest.raises(openai.NotFoundError):
        stranger.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError):
        stranger.responses.create(model="tiny", previous_response_id=second.id, input="x", max_output_tokens=1)
    a.responses.delete(second.id)
    with pytest.raises(openai.NotFoundError):
        b.responses.retrieve(second.id)
