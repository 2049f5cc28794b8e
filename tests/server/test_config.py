"""Each setting's flag, variable, default and limit come from its config field, stated once.

Walks the config dataclasses: every field has a flag (EngineConfig's too), the flags' defaults are
the fields' defaults, variables are read, bad values are refused with the message naming the
setting, and docs/OPERATIONS.md lists exactly the flags `--help` prints.
"""

from __future__ import annotations

import os
import re
from dataclasses import fields
from pathlib import Path

import pytest

from model_runtime import EngineConfig
from server.cli import build_parser, config_flags, config_from_args, default_text, main
from server.config import (
    ENGINE_FLAGS,
    GROUPS,
    BatchConfig,
    FetchPolicy,
    MediaLimits,
    MiB,
    ServerConfig,
    StoreConfig,
    env_name,
    field_flags,
)

OPERATIONS = Path(__file__).resolve().parents[2] / "docs" / "OPERATIONS.md"
# a value other than the default for each engine knob, as the flag writes it, and what the field holds then
ENGINE_SAMPLES = {
    "max_num_seqs": ("7", 7),
    "max_model_len": ("64", 64),
    "seed": ("3", 3),
    "kv_cache_memory": ("1GiB", 2**30),
    "block_size": ("32", 32),
    "max_num_batched_tokens": ("512", 512),
    "step_seconds": ("0.5", 0.5),
    "enable_prefix_caching": (None, False),  # a switch
    "encoder_cache_bytes": ("2", 2 * MiB),
}


def serve_args(*argv: str) -> ServerConfig:
    return config_from_args(build_parser().parse_args(["serve", "--model", "m", *argv]))


def test_every_engine_knob_has_a_flag():
    assert {f.name for f in fields(EngineConfig)} == set(ENGINE_FLAGS)
    assert set(ENGINE_SAMPLES) == set(ENGINE_FLAGS)


@pytest.mark.parametrize("cls", [ServerConfig, MediaLimits, FetchPolicy, StoreConfig, BatchConfig])
def test_every_server_setting_has_a_flag(cls):
    flags = field_flags(cls)
    covered = {name for spec in flags.values() for name in spec.covers}
    chained = {"engine", "fetch", "limits", "store", "batch"}  # ServerConfig's configs, whose fields have their own flags
    assert {f.name for f in fields(cls)} - chained == set(flags) | covered


def test_flag_names_and_variables_are_unique_and_follow_the_convention():
    names = [spec.name for _, _, spec, _ in config_flags()]
    assert len(names) == len(set(names))
    for _, f, spec, kind in config_flags():
        assert re.fullmatch(r"--[a-z][a-z0-9-]+", spec.name)
        assert spec.group in GROUPS
        if kind is bool:  # a switch flips the default: `--no-x` for a setting on by default
            assert spec.name.startswith("--no-") == f.default, spec.name


def test_flag_defaults_are_the_field_defaults(monkeypatch):
    for name in [n for n in os.environ if n.startswith("LLAVA_SERVE_")]:
        monkeypatch.delenv(name)
    assert serve_args() == ServerConfig(model="m", served_model_name="m")
    shown = []  # each default as --help shows it parses back to the field's default
    for owner, f, spec, kind in config_flags():
        text = None if kind is bool else default_text(owner, f, spec)  # a switch's default: not given
        if text is not None:
            shown += [spec.name, text]
    assert len(shown) > 60
    assert serve_args(*shown) == ServerConfig(model="m", served_model_name="m")


@pytest.mark.parametrize("field_name", sorted(ENGINE_SAMPLES))
def test_engine_flags_and_variables_set_their_knob(field_name, monkeypatch):
    spec = ENGINE_FLAGS[field_name]
    text, value = ENGINE_SAMPLES[field_name]
    assert getattr(EngineConfig(), field_name) != value
    flagged = serve_args(spec.name) if text is None else serve_args(spec.name, text)
    assert getattr(flagged.engine, field_name) == value
    monkeypatch.setenv(env_name(spec.name), text or "1")
    assert getattr(serve_args().engine, field_name) == value


@pytest.mark.parametrize(("argv", "message"), [
    (["--max-num-seqs", "0"], "max_num_seqs=0: must be >= 1"),
    (["--max-model-len", "8"], "max_model_len=8: must be >= 16"),
    (["--block-size", "24"], "block_size=24: must be a power of two"),
    (["--max-num-batched-tokens", "4"], "max_num_batched_tokens=4: must be >= 16"),
    (["--step-seconds", "0.01"], "step_seconds=0.01: must be within [0.05, 60]"),
    (["--kv-cache-memory", "lots"], "kv_cache_memory='lots': expected auto, a share like 0.5 or a size like 4GiB"),
    (["--encoder-cache-mb", "-1"], f"encoder_cache_bytes={-MiB}: must be >= 0"),
    (["--max-image-pixels", "0"], "max_image_pixels=0: must be >= 1"),
    (["--limit-mm-per-prompt", "image=-1"], "limit_mm_per_prompt: image=-1 must be >= 0"),
    (["--max-video-mb", "0"], "max_video_bytes=0: must be >= 1"),
    (["--port", "70000"], "port=70000: must be 0..65535"),
])
def test_bad_values_are_refused_with_the_setting_named(argv, message, capsys, monkeypatch):
    assert main(["serve", "--model", "m", *argv]) == 2
    assert capsys.readouterr().err.strip() == f"llava-serve: {message}"
    monkeypatch.setenv(env_name(argv[0]), argv[1])  # the same value from the environment, the same refusal
    assert main(["serve", "--model", "m"]) == 2
    assert capsys.readouterr().err.strip() == f"llava-serve: {message}"


def test_a_variable_argparse_cannot_read_is_refused(monkeypatch, capsys):
    monkeypatch.setenv("LLAVA_SERVE_MAX_NUM_SEQS", "many")
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args(["serve", "--model", "m"])
    assert done.value.code == 2 and "argument --max-num-seqs: invalid int value: 'many'" in capsys.readouterr().err


def test_domains_are_normalised_before_the_policy_is_built():
    assert serve_args("--allowed-media-domains", "Example.COM., cdn.example.org").fetch.allowed_domains == (
        "example.com", "cdn.example.org")
    with pytest.raises(ValueError, match="allowed_domains"):
        FetchPolicy(allowed_domains=("Example.COM",))


def flag_tables() -> dict[str, list[str]]:
    """docs/OPERATIONS.md's flag tables as the dataclasses write them, by --help section."""
    tables: dict[str, list[str]] = {group: [] for group in GROUPS}
    for owner, f, spec, kind in config_flags():
        env = f"`{env_name(spec.name)}`"
        if kind is bool:
            env, default, what = env[:-1] + "=1`", "off", spec.help
        else:
            default = default_text(owner, f, spec) or spec.auto or "—"
            if spec.is_repeatable:
                env, what = env + " (comma-separated)", spec.help + "; repeatable"
            else:
                what = spec.help
        tables[spec.group].append(f"| `{spec.name}` | {env} | {default} | {what} |")
    return tables


def test_operations_doc_lists_every_flag_as_the_code_states_it():
    text = OPERATIONS.read_text()
    for group, rows in flag_tables().items():
        table = text.split(f"\n### {group}\n", 1)[1].strip("\n").split("\n\n")[0]
        expected = "\n".join(rows)
        assert table.splitlines()[2:] == rows, f"docs/OPERATIONS.md section {group!r} should list:\n{expected}"


def test_engine_doc_names_every_knob_with_its_flag():
    text = (OPERATIONS.parent / "ENGINE.md").read_text()
    for name, spec in ENGINE_FLAGS.items():
        assert f"| `{name}` (`{spec.name}`) |" in text, name
