"""`llava-serve` command line: `serve` and `make-demo` (checkpoint tools join as subcommands).

Every `serve` flag can also be set with an environment variable LLAVA_SERVE_<FLAG> (see
server/config.py); the flag wins.
"""

from __future__ import annotations

import argparse
import logging
import sys

from server.checkpoint_commands import add_checkpoint_commands, run_checkpoint_command
from server.config import QUANTIZATIONS, ServerConfig, env_default, env_name


def _flag(parser: argparse.ArgumentParser, name: str, help: str, default=None, **kwargs) -> None:
    parser.add_argument(name, default=env_default(name, default), help=f"{help} [env {env_name(name)}]", **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llava-serve", description="Serve LLaVA-NeXT-family models with an OpenAI API.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve a checkpoint over HTTP",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _flag(serve, "--model", "checkpoint folder or hub id", required=env_default("--model") is None)
    _flag(serve, "--served-model-name", "name clients pass as `model` (default: the folder name)")
    _flag(serve, "--host", "address to bind", "127.0.0.1")
    _flag(serve, "--port", "port to bind", "8000", type=int)
    _flag(serve, "--dtype", "weights dtype: auto (the checkpoint's), float32, bfloat16, float16", "auto",
          choices=["auto", "float32", "bfloat16", "float16"])
    _flag(serve, "--device", "torch device for the model", "cpu")
    _flag(serve, "--device-map", "spread the model over devices: auto, or one device (wins over --device)")
    _flag(serve, "--quantization", "bitsandbytes quantization of the language model", "none", choices=QUANTIZATIONS)
    _flag(serve, "--model-base", "base model under a LoRA or projector-only --model (folder or hub id)")
    _flag(serve, "--max-num-seqs", "rows in one running batch", "32", type=int)
    _flag(serve, "--log-level", "log level", "info", choices=["debug", "info", "warning", "error"])

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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if hasattr(args, "run"):
        return run_checkpoint_command(args)
    if args.command == "make-demo":
        from model_runtime import make_demo

        path = make_demo(args.size, args.out, seed=args.seed, audio=args.audio)
        print(f"wrote {args.size} demo checkpoint (RANDOM weights) to {path}")
        return 0
    if args.command == "serve":
        return serve(args)
    return 2


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from server.app import create_app

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = ServerConfig(
            model=args.model,
            served_model_name=args.served_model_name or ServerConfig.default_served_name(args.model),
            host=args.host,
            port=args.port,
            dtype=args.dtype,
            device=args.device,
            device_map=args.device_map,
            quantization=args.quantization,
            model_base=args.model_base,
            max_num_seqs=args.max_num_seqs,
            log_level=args.log_level,
        )
    except ValueError as e:
        print(f"llava-serve: {e}", file=sys.stderr)
        return 2
    uvicorn.run(create_app(config), host=config.host, port=config.port, log_level=config.log_level,
                timeout_graceful_shutdown=25)
    return 0


if __name__ == "__main__":
    sys.exit(main())
