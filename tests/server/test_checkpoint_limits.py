"""A checkpoint whose layout cannot build a video refuses video parts with a 400 before any work."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from model_runtime import load_pretrained_model
from model_runtime.checkpoint_tools import make_demo
from server.app import create_app
from server.config import ServerConfig
from testkit.media import data_url, video_bytes

# grid newlines need image_newline, which a plain `spatial` merge does not have (spec 2.5)
NO_VIDEO = {"mm_patch_merge_type": "spatial", "mm_newline_position": "grid"}


@pytest.fixture(scope="module")
def no_video_model(tmp_path_factory):
    path = make_demo("tiny", tmp_path_factory.mktemp("ckpt") / "no-video", overrides=NO_VIDEO)
    return load_pretrained_model(str(path), dtype="float32")


def test_processor_does_not_offer_video(no_video_model):
    assert no_video_model.processor.modalities == frozenset({"image"})


def test_video_part_is_a_client_error(no_video_model):
    app = create_app(ServerConfig(model="tiny", served_model_name="tiny", media_workers=1), loaded=no_video_model)
    part = {"type": "video_url", "video_url": {"url": data_url("video/mp4", video_bytes(num_frames=4))}}
    with TestClient(app) as client:
        deadline = time.monotonic() + 30
        while client.get("/ready").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.02)
        r = client.post("/v1/chat/completions",
                        json={"model": "tiny", "messages": [{"role": "user", "content": [part]}], "max_tokens": 1})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "unsupported_media_format"
        assert r.json()["error"]["param"] == "messages[0].content[0].video_url"
        ok = client.post("/v1/chat/completions",
                         json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})
        assert ok.status_code == 200
