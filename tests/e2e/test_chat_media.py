"""Every content part and every parameter through the official openai client and a real server."""

from __future__ import annotations

import pytest

from model_runtime import LlavaConfig, audio_token_count, image_token_count
from testkit.media import audio_bytes, b64, data_url, image_bytes, video_bytes

pytestmark = pytest.mark.xdist_group("local")


@pytest.fixture(scope="module")
def client(local_server):
    with local_server.client() as c:
        yield c


@pytest.fixture(scope="module")
def cfg(tiny_av_checkpoint):
    return LlavaConfig.from_pretrained(tiny_av_checkpoint)


def ask(client, content, **kw):
    kw.setdefault("max_tokens", 4)
    kw.setdefault("temperature", 0)
    return client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": content}], **kw)


def test_every_content_part_in_a_multi_turn_conversation(client, cfg, origin, media_dir):
    png, jpeg = image_bytes(60, 40, "PNG", seed=1), image_bytes(50, 50, "JPEG", seed=2)
    (media_dir / "photo.jpg").write_bytes(jpeg)
    clip = video_bytes(num_frames=12, fps=6, audio_seconds=2.0, seed=3)
    speech, music = audio_bytes(1.5, rate=22050, seed=4), audio_bytes(1.0, rate=8000, fmt="FLAC", seed=5)
    messages = [
        {"role": "system", "content": "You describe media briefly."},
        {"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": data_url("image/png", png), "detail": "high"}},
            {"type": "image_url", "image_url": {"url": f"file://{media_dir}/photo.jpg"}},
            {"type": "text", "text": "Compare these."},
        ]},
        {"role": "assistant", "content": "They differ."},
        {"role": "user", "content": [
            {"type": "video_url", "video_url": {"url": origin.add("/clip.mp4", clip), "num_frames": 4,
                                                "use_audio": True}},
            {"type": "input_audio", "input_audio": {"data": b64(speech), "format": "wav"}},
            {"type": "audio_url", "audio_url": {"url": origin.add("/music.flac", music)}},
            {"type": "text", "text": "And these?"},
        ]},
    ]
    r = client.chat.completions.create(model="tiny", messages=messages, max_tokens=3, temperature=0)
    media = r.model_extra["media"]
    assert [m["modality"] for m in media] == ["image", "image", "video", "audio", "audio"]
    assert [m["param"] for m in media] == [
        "messages[1].content[0].image_url", "messages[1].content[1].image_url",
        "messages[3].content[0].video_url", "messages[3].content[1].input_audio",
        "messages[3].content[2].audio_url",
    ]
    assert [m["source"]["kind"] for m in media] == ["data", "file", "http", "input_audio", "http"]
    # token counts computed independently from the checkpoint's config (two images: one crop each)
    assert media[0]["tokens"] == image_token_count(cfg, (60, 40), single_crop=True)
    assert media[1]["tokens"] == image_token_count(cfg, (50, 50), single_crop=True)
    assert media[3]["tokens"] == audio_token_count(cfg, 24000)
    assert media[4]["tokens"] == audio_token_count(cfg, 16000)
    video = media[2]
    assert video["processing"]["frames_sampled"] == 4 and len(video["processing"]["timestamps"]) == 4
    assert video["source"]["frames"] == 12 and video["source"]["width"] == 64
    assert video["audio_track"]["resampled_to"] == 16000
    details = r.usage.prompt_tokens_details
    assert details.image_tokens == media[0]["tokens"] + media[1]["tokens"]
    assert details.video_tokens == video["tokens"] > 0
    assert details.audio_tokens == media[3]["tokens"] + media[4]["tokens"] + video["audio_track"]["tokens"]
    assert r.usage.prompt_tokens == details.text_tokens + details.image_tokens + details.video_tokens + \
        details.audio_tokens
    assert origin.hits["/clip.mp4"] == 1 and origin.hits["/music.flac"] == 1


def test_video_sampling_follows_the_request(client, origin):
    url = origin.add("/long.webm", video_bytes(num_frames=40, fps=10, container="webm", codec="libvpx-vp9"))
    few = ask(client, [{"type": "video_url", "video_url": {"url": url, "num_frames": 3}}]).model_extra["media"][0]
    assert few["processing"]["frames_sampled"] == 3
    assert few["processing"]["frame_indices"] == [0, 19, 39]
    by_fps = ask(client, [{"type": "video_url", "video_url": {"url": url, "fps": 2}}]).model_extra["media"][0]
    assert by_fps["processing"]["frame_indices"] == [0, 5, 10, 15, 20, 25, 30, 35]
    capped = ask(client, [{"type": "video_url", "video_url": {"url": url, "num_frames": 500}}])
    assert capped.model_extra["media"][0]["processing"]["frames_sampled"] == 32  # the server's ceiling
    assert few["tokens"] < by_fps["tokens"] < capped.model_extra["media"][0]["tokens"]


def test_base64_and_url_give_the_same_answer(client, origin):
    png = image_bytes(70, 30, seed=7)
    by_data = ask(client, [{"type": "image_url", "image_url": {"url": data_url("image/png", png)}},
                           {"type": "text", "text": "what?"}], max_tokens=8)
    by_url = ask(client, [{"type": "image_url", "image_url": {"url": origin.add("/same.png", png)}},
                          {"type": "text", "text": "what?"}], max_tokens=8)
    assert by_data.choices[0].message.content == by_url.choices[0].message.content
    assert by_data.usage.prompt_tokens == by_url.usage.prompt_tokens
    # the same prompt again: its KV comes from the prefix cache, every full block of it but the one holding
    # the last position (computed for its logits); the image's encoding was reused
    assert by_url.model_extra["media"][0]["encoder_cache_hit"] is True
    assert by_url.usage.prompt_tokens_details.cached_tokens == (by_url.usage.prompt_tokens - 1) // 16 * 16
    # the first time, at most the blocks it shares with earlier chats (the system prompt) were there
    assert by_data.usage.prompt_tokens_details.cached_tokens < by_url.usage.prompt_tokens_details.cached_tokens
    wav = audio_bytes(1.0, seed=8)
    a = ask(client, [{"type": "input_audio", "input_audio": {"data": b64(wav), "format": "wav"}}], max_tokens=6)
    b = ask(client, [{"type": "audio_url", "audio_url": {"url": origin.add("/same.wav", wav)}}], max_tokens=6)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.usage.prompt_tokens == b.usage.prompt_tokens


def test_streamed_text_equals_non_streamed_with_media(client, origin):
    content = [{"type": "image_url", "image_url": {"url": data_url("image/png", image_bytes(40, 40, seed=9))}},
               {"type": "video_url", "video_url": {"url": origin.add("/s.mp4", video_bytes(seed=10)),
                                                   "num_frames": 2}},
               {"type": "text", "text": "describe"}]
    full = ask(client, content, max_tokens=12)
    chunks = list(ask(client, content, max_tokens=12, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert text == full.choices[0].message.content
    assert finish == [full.choices[0].finish_reason]
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage.completion_tokens == full.usage.completion_tokens
    assert usage.prompt_tokens == full.usage.prompt_tokens
    assert usage.prompt_tokens_details.cached_tokens == (usage.prompt_tokens - 1) // 16 * 16  # the same prompt again
    assert chunks[-1].model_extra["media"][1]["tokens"] == full.model_extra["media"][1]["tokens"]


def test_sampling_parameters(client):
    prompt = [{"type": "text", "text": "Tell me a story"}]
    greedy = ask(client, prompt, max_tokens=10).choices[0].message.content
    # filters that keep only the most likely token make sampling greedy
    assert ask(client, prompt, max_tokens=10, temperature=1.0, extra_body={"top_k": 1}).choices[0].message.content == greedy
    assert ask(client, prompt, max_tokens=10, temperature=1.0, extra_body={"min_p": 1.0}).choices[0].message.content \
        == greedy
    seeded = ask(client, prompt, max_tokens=10, temperature=1.0, seed=1234, n=3)
    assert [c.index for c in seeded.choices] == [0, 1, 2]
    again = ask(client, prompt, max_tokens=10, temperature=1.0, seed=1234, n=3)
    assert [c.message.content for c in seeded.choices] == [c.message.content for c in again.choices]
    assert len({c.message.content for c in seeded.choices}) > 1  # choices sample independently
    r = ask(client, prompt, max_tokens=10, presence_penalty=1.5, frequency_penalty=0.5,
            extra_body={"repetition_penalty": 1.3, "top_k": 5, "ignore_eos": True}, top_p=0.9, user="u-1")
    assert r.usage.completion_tokens == 10 and r.choices[0].finish_reason == "length"
    assert ask(client, prompt, max_completion_tokens=3).usage.completion_tokens <= 3


def test_stop_strings_cut_the_text(client):
    prompt = [{"type": "text", "text": "Tell me a story"}]
    greedy = ask(client, prompt, max_tokens=16, extra_body={"ignore_eos": True}).choices[0].message.content
    stop = next(greedy[i:i + 2] for i in range(3, len(greedy) - 1) if greedy[i:i + 2].strip() and
                greedy.find(greedy[i:i + 2]) == i)
    cut = ask(client, prompt, max_tokens=16, stop=[stop, "never-there"], extra_body={"ignore_eos": True})
    assert cut.choices[0].message.content == greedy[:greedy.find(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_logprobs(client):
    r = ask(client, [{"type": "text", "text": "hello"}], max_tokens=5, logprobs=True, top_logprobs=3,
            extra_body={"ignore_eos": True})
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens == 5
    for item in content:
        assert len(item.top_logprobs) == 3 and item.logprob <= 0
        assert item.logprob == pytest.approx(max(t.logprob for t in item.top_logprobs), abs=1e-5)  # greedy
    stream = list(ask(client, [{"type": "text", "text": "hello"}], max_tokens=5, logprobs=True, top_logprobs=2,
                      stream=True, extra_body={"ignore_eos": True}))
    streamed = [lp for c in stream if c.choices and c.choices[0].logprobs for lp in c.choices[0].logprobs.content]
    assert [t.token for t in streamed] == [t.token for t in content]


def test_streaming_several_choices(client):
    chunks = list(ask(client, [{"type": "text", "text": "hi"}], max_tokens=4, temperature=1.0, seed=5, n=2,
                      stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True}))
    finished = sorted(c.choices[0].index for c in chunks if c.choices and c.choices[0].finish_reason)
    assert finished == [0, 1]
    assert chunks[-1].usage.completion_tokens == 8
