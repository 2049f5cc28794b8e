"""`llava-serve` command line: `serve`, `run-batch` and `make-demo` (checkpoint tools join as subcommands).

The `serve` flags are built from the config dataclasses (server/config.py): each field's `Flag`
gives its name, help and group, the field its default and type. Every flag can also be set with an
environment variable LLAVA_SERVE_<FLAG>; the flag wins. Repeatable flags take a comma-separated
list from the environment; switches take 1/true/yes/on.
"""

from __future__ import annotations

import argparse
import logging
import sys
import types
from collections.abc import Iterator
from dataclasses import MISSING, Field, fields, is_dataclass
from typing import Any, get_type_hints

from server.checkpoint_commands import add_checkpoint_commands, run_checkpoint_command
from server.config import GROUPS, Flag, ServerConfig, env_default, env_flag, env_list, env_name, field_flags


def config_flags(cls: type = ServerConfig) -> Iterator[tuple[type, Field, Flag, Any]]:
    """Every flag of a config dataclass and of the configs chained in it: (class, field, flag, field type)."""
    hints = get_type_hints(cls)
    flags = field_flags(cls)
    for f in fields(cls):
        if is_dataclass(hints[f.name]):
            yield from config_flags(hints[f.name])
        elif f.name in flags:
            yield cls, f, flags[f.name], hints[f.name]


def default_text(owner: type, f: Field, spec: Flag) -> str | None:
    """The field's default as the flag writes it; None where there is none (`spec.auto` says what then)."""
    if spec.show is not None:
        return spec.show(owner)
    if f.default is None or f.default is MISSING or isinstance(f.default, tuple):
        return None
    number = f.default / spec.unit if spec.unit != 1 else f.default
    return str(int(number)) if isinstance(number, float) and number.is_integer() else str(number)


def _text_type(spec: Flag, kind: Any) -> Any:
    """What argparse converts the flag's text to (a `parse` function takes the text as it is)."""
    if spec.parse is not None:
        return None
    if spec.unit != 1:
        return float
    if isinstance(kind, types.UnionType):
        kind = next(k for k in kind.__args__ if k is not type(None))
    return None if kind is str else kind


def _dest(spec: Flag) -> str:
    return spec.name.removeprefix("--").replace("-", "_")


def add_serve_flags(serve: argparse.ArgumentParser) -> None:
    groups = {name: serve.add_argument_group(name) for name in GROUPS}
    for owner, f, spec, kind in config_flags():
        group, env = groups[spec.group], env_name(spec.name)
        if kind is bool:
            group.add_argument(spec.name, dest=_dest(spec), action="store_true", default=env_flag(spec.name),
                               help=f"{spec.help} [env {env}=1]")
        elif spec.is_repeatable:
            group.add_argument(spec.name, dest=_dest(spec), action="append", default=None,
                               help=f"{spec.help}; repeatable [env {env}, comma-separated]")
        else:
            text = default_text(owner, f, spec)
            shown = text if text is not None else spec.auto
            required = f.default is MISSING and spec.auto is None and env_default(spec.name) is None
            group.add_argument(spec.name, dest=_dest(spec), default=env_default(spec.name, text),
                               type=_text_type(spec, kind), choices=spec.choices, required=required,
                               help=f"{spec.help} [env {env}]" + (f" (default: {shown})" if shown else ""))


def _field_values(f: Field, spec: Flag, kind: Any, value: Any) -> dict[str, Any]:
    """What a flag's parsed value sets: nothing where the flag was not given and the default stands."""
    if kind is bool:
        return {f.name: not f.default} if value else {}  # a switch flips the default
    if spec.is_repeatable:
        value = value or env_list(spec.name) or None
    if value is None:
        return {}
    if spec.parse is not None:
        return spec.parse(value) if spec.covers else {f.name: spec.parse(value)}
    return {f.name: int(value * spec.unit) if spec.unit != 1 else value}


def config_values(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """The fields of `cls` that its flags set (chained configs built from theirs); the rest keep their defaults."""
    hints = get_type_hints(cls)
    flags = field_flags(cls)
    values: dict[str, Any] = {}
    for f in fields(cls):
        if is_dataclass(hints[f.name]):
            values[f.name] = hints[f.name](**config_values(hints[f.name], args))
        elif f.name in flags:
            values.update(_field_values(f, flags[f.name], hints[f.name], getattr(args, _dest(flags[f.name]))))
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llava-serve", description="Serve LLaVA-NeXT-family models with an OpenAI API.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve a checkpoint over HTTP")
    add_serve_flags(serve)

    run_batch = sub.add_parser("run-batch", help="run an OpenAI batch input file offline (no HTTP server)",
                               description="Each line of the input (OpenAI's batch format; url one of "
                               "/v1/chat/completions, /v1/responses, /v1/completions) runs through the server's "
                               "pipeline; each answer is appended to the output file in OpenAI's output format. "
                               "The serve flags set the model and engine.")
    run_batch.add_argument("-i", "--input-file", required=True, help="the batch input file (JSONL)")
    run_batch.add_argument("-o", "--output-file", required=True, help="the output file (JSONL), answers and errors")
    run_batch.add_argument("--resume", action="store_true",
                           help="keep the output file and skip the custom_ids it holds already")
    add_serve_flags(run_batch)

    demo = sub.add_parser("make-demo", help="write a demo checkpoint with RANDOM weights (meaningless text)",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    demo.add_argument("--size", choices=["tiny", "small", "realistic"], default="small",
                      help="tiny: unit tests; small: `make serve`; realistic: llava-onevision-qwen2-0.5b-ov dimensions")
    demo.add_argument("--out", required=True, help="folder to write")
    demo.add_argument("--seed", type=int, default=0, help="random seed for weights and tokenizer corpus")
    demo.add_argument("--audio", action=argparse.BooleanOptionalAction, default=None,
                      help="add (or leave out) a Whisper audio tower; default: small has one, tiny and realistic not")
    add_checkpoint_commands(sub)
    return parser


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    """Raises ValueError naming the setting when a value is out of range."""
    values = config_values(ServerConfig, args)
    values["served_model_name"] = values.get("served_model_name") or ServerConfig.default_served_name(values["model"])
    return ServerConfig(**values)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if hasattr(args, "run"):
        return run_checkpoint_command(args)
    if args.command == "make-demo":
        from model_runtime.checkpoint_tools import make_demo

        path = make_demo(args.size, args.out, seed=args.seed, audio=args.audio)
        print(f"wrote {args.size} demo checkpoint (RANDOM weights) to {path}")
        return 0
    if args.command == "serve":
        return serve(args)
    if args.command == "run-batch":
        return run_batch(args)
    return 2


def serve(args: argparse.Namespace) -> int:
    from server.runner import run_server

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = config_from_args(args)
    except ValueError as e:
        print(f"llava-serve: {e}", file=sys.stderr)
        return 2
    return run_server(config)


def run_batch(args: argparse.Namespace) -> int:
    import asyncio
    from pathlib import Path

    from server.batch.offline import InputRefused, run_offline

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = config_from_args(args)
        summary = asyncio.run(run_offline(config, Path(args.input_file), Path(args.output_file), args.resume))
    except (ValueError, InputRefused, OSError, RuntimeError) as e:
        print(f"llava-serve run-batch: error: {e}", file=sys.stderr)
        return 2
    print(summary.line(), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
