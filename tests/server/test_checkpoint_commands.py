"""The checkpoint subcommands' command line, and the serve flags that reach the loader."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

import model_runtime
from server.app import create_app
from server.cli import build_parser, main
from server.config import QUANTIZATIONS, ServerConfig

SUBCOMMANDS = ("convert-bin", "apply-delta", "make-delta", "upgrade", "merge-lora")


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: llava-serve {command}") and "options:" in out


def test_missing_arguments_and_missing_files(tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        main(["apply-delta", "--base", "b"])
    assert done.value.code == 2 and "--delta" in capsys.readouterr().err
    assert main(["convert-bin", str(tmp_path / "absent"), str(tmp_path / "out")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main(["upgrade", str(tmp_path)]) == 2
    assert "no config.json" in capsys.readouterr().err


def test_serve_flags_and_their_environment_fallbacks(monkeypatch):
    args = build_parser().parse_args(["serve", "--model", "m", "--quantization", "bitsandbytes-4bit",
                                      "--device-map", "auto", "--model-base", "base"])
    assert (args.quantization, args.device_map, args.model_base) == ("bitsandbytes-4bit", "auto", "base")
    monkeypatch.setenv("LLAVA_SERVE_QUANTIZATION", "bitsandbytes-8bit")
    monkeypatch.setenv("LLAVA_SERVE_MODEL_BASE", "/models/base")
    args = build_parser().parse_args(["serve", "--model", "m"])
    assert (args.quantization, args.model_base, args.device_map) == ("bitsandbytes-8bit", "/models/base", None)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--model", "m", "--quantization", "int3"])
    with pytest.raises(ValueError, match="quantization='int3'"):
        ServerConfig(model="m", served_model_name="m", quantization="int3")
    assert QUANTIZATIONS == model_runtime.QUANTIZATIONS


def test_lifespan_loads_quantized_and_reports_it(tiny_checkpoint):
    config = ServerConfig(model=tiny_checkpoint, served_model_name="tiny", quantization="bitsandbytes-8bit")
    with TestClient(create_app(config)) as client:
        deadline = time.monotonic() + 60  # the model loads in the background; /ready says when
        while client.get("/ready").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        metrics = client.get("/metrics").text
        reply = client.post("/v1/chat/completions", json={
            "model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    info = next(line for line in metrics.splitlines() if line.startswith("llava_model_info{"))
    # on the CPU, 8-bit keeps the dtype --dtype auto picks (the float32 tiny checkpoint's: no float16 forced)
    assert 'quantization="bitsandbytes-8bit"' in info and 'dtype="float32"' in info
    assert reply.status_code == 200, reply.text
