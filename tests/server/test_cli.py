"""Every `serve` flag parses, has an LLAVA_SERVE_* variable, and lands in the config."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from server.cli import build_parser, config_from_args
from server.config import MiB, env_name, parse_mm_limits


def serve_args(*argv: str):
    return config_from_args(build_parser().parse_args(["serve", "--model", "m", *argv]))


def test_defaults_follow_the_spec():
    c = serve_args()
    assert (c.max_queued_requests, c.shutdown_timeout, c.max_body_bytes, c.api_keys) == (256, 25.0, 32 * MiB, ())
    assert (c.limits.max_images, c.limits.max_videos, c.limits.max_audios) == (8, 2, 4)
    assert c.limits.max_image_pixels == 16_777_216 and c.limits.max_video_seconds == 600
    assert (c.fetch.allow_http, c.fetch.allow_loopback, c.fetch.allowed_local_path) == (False, False, None)
    assert (c.fetch.connect_timeout, c.fetch.image_timeout, c.fetch.video_timeout, c.fetch.max_redirects) == (
        3, 10, 30, 3)
    assert (c.fetch.max_image_bytes, c.fetch.max_audio_bytes, c.fetch.max_video_bytes) == (20 * MiB, 25 * MiB,
                                                                                          100 * MiB)


def test_flags_and_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LLAVA_SERVE_API_KEY", "a,b")
    monkeypatch.setenv("LLAVA_SERVE_ALLOW_HTTP_MEDIA", "1")
    monkeypatch.setenv("LLAVA_SERVE_MAX_QUEUED_REQUESTS", "7")
    monkeypatch.setenv("LLAVA_SERVE_LIMIT_MM_PER_PROMPT", "image=2")
    monkeypatch.setenv("LLAVA_SERVE_ALLOWED_MEDIA_DOMAINS", "example.com, cdn.example.org")
    c = serve_args("--max-video-frames", "16", "--allowed-local-media-path", str(tmp_path))
    assert c.api_keys == ("a", "b") and c.fetch.allow_http and c.max_queued_requests == 7
    assert (c.limits.max_images, c.limits.max_videos) == (2, 2) and c.limits.max_video_frames == 16
    assert c.fetch.allowed_domains == ("example.com", "cdn.example.org")
    assert c.fetch.allowed_local_path == str(tmp_path)
    flagged = serve_args("--api-key", "x", "--api-key", "y", "--max-queued-requests", "3")
    assert flagged.api_keys == ("x", "y") and flagged.max_queued_requests == 3  # a flag wins over the env


def test_bad_values_name_the_setting():
    with pytest.raises(ValueError, match="max_queued_requests"):
        serve_args("--max-queued-requests", "0")
    with pytest.raises(ValueError, match="allowed_local_path"):
        serve_args("--allowed-local-media-path", "/no/such/folder")
    with pytest.raises(ValueError, match="unknown modality"):
        parse_mm_limits("hologram=1")
    assert parse_mm_limits('{"video": 1}') == {"video": 1}


def test_help_documents_every_flag_with_its_variable():
    text = subprocess.run([sys.executable, "-m", "server.cli", "serve", "--help"], capture_output=True, text=True,
                          env={"COLUMNS": "200", "PATH": ""}).stdout
    flags = set(re.findall(r"(--[a-z][a-z0-9-]+)", text)) - {"--help"}
    assert len(flags) > 40
    for flag in flags:
        assert env_name(flag) in text, flag


def test_hf_behaviour_flag_and_environment(monkeypatch):
    assert serve_args().hf_behaviour == "original"
    monkeypatch.setenv("LLAVA_SERVE_HF_BEHAVIOUR", "transformers")
    assert serve_args().hf_behaviour == "transformers"
    assert serve_args("--hf-behaviour", "original").hf_behaviour == "original"  # the flag wins
    monkeypatch.setenv("LLAVA_SERVE_HF_BEHAVIOUR", "hf")
    with pytest.raises(ValueError, match="hf_behaviour='hf'"):
        serve_args()
