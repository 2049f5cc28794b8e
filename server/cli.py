"""`llava-serve` command line: `serve` and `make-demo` (checkpoint tools join as subcommands).

Every `serve` flag can also be set with an environment variable LLAVA_SERVE_<FLAG> (see
server/config.py); the flag wins. Repeatable flags take a comma-separated list from the
environment; boolean flags take 1/true/yes/on.
"""

from __future__ import annotations

import argparse
import logging
import sys

from server.checkpoint_commands import add_checkpoint_commands, run_checkpoint_command
from server.config import (
    HF_BEHAVIOURS,
    QUANTIZATIONS,
    FetchPolicy,
    MediaLimits,
    MiB,
    ServerConfig,
    env_default,
    env_flag,
    env_list,
    env_name,
    parse_memory,
    parse_mm_limits,
)


def _flag(parser: argparse.ArgumentParser, name: str, help: str, default=None, **kwargs) -> None:
    parser.add_argument(name, default=env_default(name, default), help=f"{help} [env {env_name(name)}]", **kwargs)


def _switch(parser: argparse.ArgumentParser, name: str, help: str) -> None:
    parser.add_argument(name, action="store_true", default=env_flag(name), help=f"{help} [env {env_name(name)}=1]")


def _repeat(parser: argparse.ArgumentParser, name: str, help: str) -> None:
    parser.add_argument(name, action="append", default=None,
                        help=f"{help}; repeatable [env {env_name(name)}, comma-separated]")


def add_serve_flags(serve: argparse.ArgumentParser) -> None:
    model = serve.add_argument_group("model")
    _flag(model, "--model", "checkpoint folder or hub id", required=env_default("--model") is None)
    _flag(model, "--served-model-name", "name clients pass as `model` (default: the folder name)")
    _flag(model, "--dtype", "weights dtype: auto (the checkpoint's), float32, bfloat16, float16", "auto",
          choices=["auto", "float32", "bfloat16", "float16"])
    _flag(model, "--device", "torch device for the model", "cpu")
    _flag(model, "--device-map", "spread the model over devices: auto, or one device (wins over --device)")
    _flag(model, "--quantization", "bitsandbytes quantization of the language model", "none", choices=QUANTIZATIONS)
    _flag(model, "--model-base", "base model under a LoRA or projector-only --model (folder or hub id)")
    _flag(model, "--hf-behaviour", "llava-hf checkpoints, where transformers and the original LLaVA code differ: "
          "original (its conversation template, unpadding, image layouts) or transformers (the checkpoint's chat "
          "template, transformers' unpad rounding and image layouts; docs/CHECKPOINTS.md section 8)", "original",
          choices=HF_BEHAVIOURS)
    _flag(model, "--max-model-len", "context length (prompt + output tokens); default: the checkpoint's", type=int)

    engine = serve.add_argument_group("engine (docs/ENGINE.md)")
    _flag(engine, "--max-num-seqs", "sequences decoding at once (each of a request's n choices is one)", "32",
          type=int)
    _flag(engine, "--kv-cache-memory", "KV cache size: a size (4GiB, 512MiB), a share of the memory available at "
          "start-up (0.5), or auto (GPU: 0.8 of free memory; CPU: min(4 GiB, half the available memory))", "auto")
    _flag(engine, "--block-size", "token positions per KV cache block (a power of two)", "16", type=int)
    _flag(engine, "--max-num-batched-tokens", "work per engine step in prompt tokens: decode rows always run, "
          "prompts and media encoding are cut into chunks to fit (default: 4096 on a GPU; on the CPU paced by "
          "time, see --step-seconds; 4x in steps where nothing decodes)", type=int)
    _flag(engine, "--step-seconds", "CPU without --max-num-batched-tokens: size each step in which some stream "
          "decodes to last about this long, from the engine's own step timings (the longest token gap while "
          "other prompts and media are computed)", "1.5", type=float)
    _switch(engine, "--no-packed-linear", "CPU, float32: keep PyTorch's default matmul for the language model's "
             "linear layers instead of weights packed once for oneDNN (faster decoding, batch-independent rows)")
    _switch(engine, "--no-prefix-caching", "do not reuse the KV of prompt prefixes seen before")
    _flag(engine, "--encoder-cache-mb", "encoded media kept for reuse, in MiB (0: none)", "512", type=float)

    http = serve.add_argument_group("HTTP")
    _flag(http, "--host", "address to bind", "127.0.0.1")
    _flag(http, "--port", "port to bind", "8000", type=int)
    _repeat(http, "--api-key", "bearer token clients must send (every route but /health, /ready)")
    _switch(http, "--metrics-public", "serve /metrics without an API key")
    _switch(http, "--no-playground", "do not serve the web playground page at /")
    _flag(http, "--max-queued-requests", "requests admitted and not yet running; beyond it 429", "256", type=int)
    _flag(http, "--shutdown-timeout", "seconds in-flight requests may take to finish after SIGTERM", "25",
          type=float)
    _flag(http, "--max-request-body-mb", "largest request body in MiB (413 beyond)", "32", type=float)
    _flag(http, "--max-n", "largest `n` (choices per request)", "8", type=int)
    _flag(http, "--ready-stall-timeout", "/ready fails when the engine loop has not turned for this many seconds",
          "60", type=float)
    _flag(http, "--log-level", "log level", "info", choices=["debug", "info", "warning", "error"])

    fetch = serve.add_argument_group("media fetching")
    _repeat(fetch, "--allowed-media-domains", "only fetch media from these hosts and their subdomains")
    _flag(fetch, "--allowed-local-media-path", "serve file:// media URLs from inside this folder (default: refused)")
    _switch(fetch, "--allow-http-media", "also fetch plain http:// media URLs (local use only)")
    _switch(fetch, "--allow-loopback-media", "also fetch media from loopback addresses (local use only)")
    _flag(fetch, "--media-ca-file", "PEM bundle of extra CAs trusted for https media (e.g. an internal CA)")
    _flag(fetch, "--max-media-redirects", "redirects followed per fetch, each re-checked", "3", type=int)
    _flag(fetch, "--media-connect-timeout", "seconds to connect to a media origin", "3", type=float)
    _flag(fetch, "--image-fetch-timeout", "seconds to fetch one image", "10", type=float)
    _flag(fetch, "--audio-fetch-timeout", "seconds to fetch one audio file", "10", type=float)
    _flag(fetch, "--video-fetch-timeout", "seconds to fetch one video", "30", type=float)
    _flag(fetch, "--max-image-mb", "largest image file in MiB", "20", type=float)
    _flag(fetch, "--max-audio-mb", "largest audio file in MiB", "25", type=float)
    _flag(fetch, "--max-video-mb", "largest video file in MiB", "100", type=float)

    media = serve.add_argument_group("media limits")
    _flag(media, "--limit-mm-per-prompt", "items per request, e.g. image=8,video=2,audio=4 (or JSON)",
          "image=8,video=2,audio=4")
    _flag(media, "--max-image-pixels", "largest image, width x height (declared and decoded)", "16777216", type=int)
    _flag(media, "--max-image-aspect", "largest long side / short side ratio of an image", "200", type=float)
    _flag(media, "--max-video-width", "largest video frame, long side in pixels", "3840", type=int)
    _flag(media, "--max-video-height", "largest video frame, short side in pixels", "2160", type=int)
    _flag(media, "--max-video-seconds", "longest video", "600", type=float)
    _flag(media, "--max-video-frames", "ceiling of frames sampled per video (default: the checkpoint's "
          "frames_upbound, else 32)", type=int)
    _flag(media, "--video-decode-timeout", "wall-clock seconds to decode one video", "20", type=float)
    _flag(media, "--image-decode-timeout", "wall-clock seconds to decode one image or audio file", "10", type=float)
    _flag(media, "--max-audio-seconds", "longest audio", "600", type=float)
    _flag(media, "--max-audio-channels", "most audio channels", "2", type=int)
    _flag(media, "--min-audio-sample-rate", "lowest audio sample rate in Hz", "8000", type=int)
    _flag(media, "--max-audio-sample-rate", "highest audio sample rate in Hz", "192000", type=int)
    _flag(media, "--media-workers", "decoder processes (isolated from the server)", "2", type=int)
    _flag(media, "--media-worker-memory-mb", "address-space cap of one decoder process in MiB (0: none)", "4096",
          type=int)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llava-serve", description="Serve LLaVA-NeXT-family models with an OpenAI API.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve a checkpoint over HTTP",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_serve_flags(serve)

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
    mm = {"image": 8, "video": 2, "audio": 4, **parse_mm_limits(args.limit_mm_per_prompt)}
    limits = MediaLimits(
        max_images=mm["image"], max_videos=mm["video"], max_audios=mm["audio"],
        max_image_pixels=args.max_image_pixels, max_image_aspect=args.max_image_aspect,
        max_video_width=args.max_video_width, max_video_height=args.max_video_height,
        max_video_seconds=args.max_video_seconds,
        max_video_frames=int(args.max_video_frames) if args.max_video_frames is not None else None,
        video_decode_seconds=args.video_decode_timeout, image_decode_seconds=args.image_decode_timeout,
        max_audio_seconds=args.max_audio_seconds, max_audio_channels=args.max_audio_channels,
        min_audio_sample_rate=args.min_audio_sample_rate, max_audio_sample_rate=args.max_audio_sample_rate,
    )
    domains = args.allowed_media_domains or env_list("--allowed-media-domains")
    fetch = FetchPolicy(
        allow_http=args.allow_http_media, allow_loopback=args.allow_loopback_media,
        allowed_domains=tuple(d for item in domains for d in item.split(",")),
        allowed_local_path=args.allowed_local_media_path, ca_file=args.media_ca_file,
        max_redirects=args.max_media_redirects,
        connect_timeout=args.media_connect_timeout, image_timeout=args.image_fetch_timeout,
        audio_timeout=args.audio_fetch_timeout, video_timeout=args.video_fetch_timeout,
        max_image_bytes=int(args.max_image_mb * MiB), max_audio_bytes=int(args.max_audio_mb * MiB),
        max_video_bytes=int(args.max_video_mb * MiB),
    )
    return ServerConfig(
        model=args.model,
        served_model_name=args.served_model_name or ServerConfig.default_served_name(args.model),
        host=args.host, port=args.port, dtype=args.dtype, device=args.device, device_map=args.device_map,
        quantization=args.quantization, model_base=args.model_base, hf_behaviour=args.hf_behaviour,
        max_num_seqs=args.max_num_seqs,
        max_model_len=int(args.max_model_len) if args.max_model_len is not None else None,
        kv_cache_memory=parse_memory(args.kv_cache_memory), block_size=int(args.block_size),
        max_num_batched_tokens=int(args.max_num_batched_tokens) if args.max_num_batched_tokens is not None else None,
        step_seconds=float(args.step_seconds), packed_linear=not args.no_packed_linear,
        enable_prefix_caching=not args.no_prefix_caching, encoder_cache_bytes=int(float(args.encoder_cache_mb) * MiB),
        log_level=args.log_level,
        api_keys=tuple(args.api_key or env_list("--api-key")),
        metrics_public=args.metrics_public, playground=not args.no_playground,
        max_queued_requests=args.max_queued_requests, shutdown_timeout=args.shutdown_timeout,
        max_body_bytes=int(args.max_request_body_mb * MiB), max_n=args.max_n,
        media_workers=args.media_workers, media_worker_memory_mb=args.media_worker_memory_mb,
        ready_stall_seconds=args.ready_stall_timeout,
        limits=limits, fetch=fetch,
    )


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


if __name__ == "__main__":
    sys.exit(main())
