"""Video frames: ORIG's frame plans (fps steps, frames_upbound, force_sample, request overrides),
frame tensors with exact token counts, and LLaVA-Video's time instruction in the prompt."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from model_runtime import ChatTurn, InvalidMediaError, MediaInput, Processor, plan_video_frames
from model_runtime.arch import layout
from model_runtime.processing.prompt import tokenize_prompt
from tests.conftest import random_image


def plan(total, native_fps, **kwargs):
    kwargs.setdefault("frames_upbound", 32)
    return plan_video_frames(total, native_fps, **kwargs)


def test_fps_sampling_under_the_cap_keeps_one_frame_per_second():
    indices, timestamps = plan(300, 30.0)  # 10 s at 30 fps
    assert indices == tuple(range(0, 300, 30))
    assert timestamps == pytest.approx([float(s) for s in range(10)])


def test_fps_step_is_rounded_and_at_least_one():
    assert plan(120, 29.97).indices == (0, 30, 60, 90)
    assert plan(120, 30.0, video_fps=2).indices == tuple(range(0, 120, 15))
    slow = plan(5, 0.5)  # one frame every 2 s: every frame is sampled
    assert slow.indices == (0, 1, 2, 3, 4) and slow.timestamps == (0.0, 2.0, 4.0, 6.0, 8.0)


def test_over_the_cap_samples_uniformly_over_the_whole_video():
    assert plan(10, 1.0, frames_upbound=4).indices == (0, 3, 6, 9)
    p = plan(100, 1.0, frames_upbound=3)
    assert p.indices == (0, 49, 99) and p.timestamps == (0.0, 49.0, 99.0)
    assert len(plan(3000, 30.0).indices) == 32  # 100 s at 1 fps > 32
    assert len(plan(3000, 30.0, frames_upbound=0).indices) == 100  # 0: no cap


def test_force_sample_always_samples_the_cap_even_with_repeats():
    assert plan(300, 30.0, frames_upbound=4, force_sample=True).indices == (0, 99, 199, 299)
    # ORIG repeats frames of a short video rather than give the model fewer than it was trained on
    assert plan(3, 30.0, frames_upbound=5, force_sample=True).indices == (0, 0, 1, 1, 2)


def test_request_overrides():
    # num_frames: exactly that many, spread evenly, even when fps sampling would give fewer
    assert plan(300, 30.0, num_frames=8).indices == (0, 42, 85, 128, 170, 213, 256, 299)
    assert plan(20, 30.0, num_frames=50).indices == tuple(range(20))  # never more than the video has
    # fps replaces video_fps; the checkpoint's cap still applies
    assert plan(300, 30.0, fps=2.0).indices == tuple(range(0, 300, 15))
    assert len(plan(3000, 30.0, fps=2.0).indices) == 32
    # both: fps sampling capped at num_frames
    assert plan(300, 30.0, fps=0.5, num_frames=10).indices == (0, 60, 120, 180, 240)
    assert plan(300, 30.0, fps=5.0, num_frames=10).indices == (0, 33, 66, 99, 132, 166, 199, 232, 265, 299)


@pytest.mark.parametrize("kwargs", [
    {"total": 0, "native": 30.0}, {"total": 10, "native": 0.0}, {"total": 10, "native": float("nan")},
    {"total": 10, "native": 30.0, "num_frames": 0}, {"total": 10, "native": 30.0, "video_fps": 0.0},
    {"total": 10, "native": 30.0, "fps": -1.0},
])
def test_bad_plans_are_refused(kwargs):
    total, native = kwargs.pop("total"), kwargs.pop("native")
    with pytest.raises(ValueError):
        plan(total, native, **kwargs)


def test_processor_plan_uses_the_checkpoint_keys(tiny_model):
    cfg = dataclasses.replace(tiny_model.config, frames_upbound=4, force_sample=True)
    processor = Processor(cfg, tiny_model.tokenizer, tiny_model.processor.template)
    assert processor.plan_video_frames(300, 30.0).indices == (0, 99, 199, 299)
    assert processor.plan_video_frames(300, 30.0, num_frames=2).indices == (0, 299)
    assert tiny_model.processor.max_video_frames == 32  # no frames_upbound in the checkpoint


def _video(timestamps, duration) -> MediaInput:
    return MediaInput("video", torch.zeros(1), num_tokens=5, timestamps=timestamps, duration=duration)


def test_time_instruction_follows_the_video_line(tiny_model):
    cfg = dataclasses.replace(tiny_model.config, add_time_instruction=True)
    processor = Processor(cfg, tiny_model.tokenizer, tiny_model.processor.template)
    turns = [ChatTurn("user", "<video>\nWhat happens?")]
    prompt = processor.build_prompt(turns, [_video((0.0, 1.5, 3.0), 4.0)])
    expected_user = (
        "<video>\nThe video lasts for 4.00 seconds, and 3 frames are uniformly sampled from it. These frames are "
        "located at 0.00s,1.50s,3.00s.Please answer the following questions related to this video.\nWhat happens?"
    )
    expected = processor.template.render([ChatTurn("user", expected_user)])
    assert prompt.token_ids == tokenize_prompt(expected, tiny_model.tokenizer)
    # without the key the prompt is left alone
    plain = tiny_model.processor.build_prompt(turns, [_video((0.0, 1.5, 3.0), 4.0)])
    assert plain.token_ids == tokenize_prompt(processor.template.render(turns), tiny_model.tokenizer)


def test_each_video_gets_its_own_time_instruction(tiny_model):
    cfg = dataclasses.replace(tiny_model.config, add_time_instruction=True)
    processor = Processor(cfg, tiny_model.tokenizer, tiny_model.processor.template)
    turns = [ChatTurn("user", "Compare <video> and <video>\nnow")]
    media = [_video((0.0,), 1.0), _video((0.0, 2.0), 2.5)]
    text = tiny_model.tokenizer.decode([t for t in processor.build_prompt(turns, media).token_ids if t >= 0])
    assert "Compare \nThe video lasts for 1.00 seconds, and 1 frames" in text
    assert "located at 0.00s.Please answer the following questions related to this video.\n and " in text
    assert "The video lasts for 2.50 seconds, and 2 frames" in text and "0.00s,2.00s.Please" in text
    assert text.count("The video lasts") == 2 and text.count("\n\n") == 0


def test_process_video_squashes_each_frame_and_counts_tokens(tiny_model):
    frames = [random_image(64, 36, seed=i) for i in range(5)]
    item = tiny_model.processor.process_video(frames, [0.0, 1.0, 2.0, 3.0, 4.0], duration=4.5)
    s = tiny_model.config.vision.image_size
    assert item.modality == "video" and item.data.shape == (5, 3, s, s)
    torch.testing.assert_close(item.data[2], tiny_model.processor.images.to_tensor([frames[2]])[0])
    assert item.num_tokens == layout.video_token_count(tiny_model.config, 5)
    assert item.timestamps == (0.0, 1.0, 2.0, 3.0, 4.0) and item.duration == 4.5 and item.image_size == (64, 36)



def test_video_rows_equal_token_counts_for_random_frame_counts(tiny_model):
    gen = torch.Generator().manual_seed(7)
    counts = [1, 2] + torch.randint(3, 40, (4,), generator=gen).tolist()
    items = []
    for n in counts:
        frames = [random_image(30 + n, 20 + 2 * n, seed=100 * n + i) for i in range(n)]
        items.append(tiny_model.processor.process_video(frames, [i / 2 for i in range(n)], duration=n / 2))
    with torch.inference_mode():
        encoded = tiny_model.model.encode_media(items)  # every frame of every video in one tower call
    for n, item, out in zip(counts, items, encoded, strict=True):
        assert out.features.shape == (item.num_tokens, tiny_model.model.config.hidden_size)
        assert item.num_tokens == layout.video_token_count(tiny_model.config, n)

def test_process_video_refuses_missing_frames(tiny_model):
    with pytest.raises(InvalidMediaError):
        tiny_model.processor.process_video([], [], duration=1.0)
    with pytest.raises(InvalidMediaError):
        tiny_model.processor.process_video([random_image(8, 8)], [0.0, 1.0], duration=1.0)


def test_a_server_ceiling_keeps_the_checkpoints_force_sample(tiny_model):
    """LLaVA-Video (frames_upbound 64, force_sample) behind a 32-frame ceiling: a 10 s clip still
    gets 32 frames spread over it, not the 1 fps sampling (10 frames)."""
    cfg = dataclasses.replace(tiny_model.config, frames_upbound=64, force_sample=True, video_fps=1)
    processor = Processor(cfg, tiny_model.tokenizer, tiny_model.processor.template)
    plan = processor.plan_video_frames(300, 30.0, max_frames=32)
    assert len(plan.indices) == 32 and plan.indices[0] == 0 and plan.indices[-1] == 299
    assert processor.plan_video_frames(300, 30.0, num_frames=500, max_frames=32).indices == plan.indices
    assert len(processor.plan_video_frames(300, 30.0, num_frames=5, max_frames=32).indices) == 5
    assert len(processor.plan_video_frames(300, 30.0).indices) == 64  # no ceiling: the checkpoint's
    # without force_sample the ceiling caps the checkpoint's fps sampling
    plain = Processor(dataclasses.replace(cfg, force_sample=False), tiny_model.tokenizer, tiny_model.processor.template)
    assert plain.plan_video_frames(300, 30.0, max_frames=32).indices == tuple(range(0, 300, 30))
    assert len(plain.plan_video_frames(3000, 30.0, max_frames=32).indices) == 32
