"""The checkpoint subcommands of `llava-serve`: convert-bin, apply-delta, make-delta, upgrade, merge-lora,
export-hf.

Thin wrappers: each parses its flags, calls the model_runtime tool, prints what it wrote, and turns
a ConfigError (missing files, shape mismatches, incompatible bases) into one line on stderr and
exit status 2. None of them asks a question. See docs/CHECKPOINTS.md.
"""

from __future__ import annotations

import argparse
import re
import sys

SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    if not m or m.group(2).upper() not in SIZE_UNITS:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a size such as 500MB or 5GB")
    return int(float(m.group(1)) * SIZE_UNITS[m.group(2).upper()])


def add_checkpoint_commands(sub: argparse._SubParsersAction) -> None:
    fmt = argparse.ArgumentDefaultsHelpFormatter

    p = sub.add_parser("convert-bin", formatter_class=fmt,
                       help="convert pickled weights (.bin/.pt/.pth) to safetensors, the only place pickles are read",
                       description="Read each .bin/.pt/.pth of SRC with torch.load(weights_only=True) and write it "
                                   "as safetensors to DST (DST may be SRC); configs and tokenizer files are copied.")
    p.add_argument("src", metavar="SRC", help="folder with pickled weights")
    p.add_argument("dst", metavar="DST", help="folder to write (SRC itself to convert in place)")
    p.set_defaults(run=_convert_bin)

    for name, other, summary, description in (
        ("apply-delta", "delta", "rebuild a model: target = base + delta",
         "Add a weight delta (from make-delta, or an original LLaVA delta converted with convert-bin) to its "
         "base language model, shard by shard."),
        ("make-delta", "target", "write delta = target - base (float32)",
         "Write the difference between a LLaVA model and its base language model, in float32, so that "
         "apply-delta rebuilds a 16-bit target bit for bit."),
    ):
        p = sub.add_parser(name, formatter_class=fmt, help=summary, description=description)
        p.add_argument("--base", required=True, help="the original language model (folder or hub id)")
        p.add_argument(f"--{other}", required=True, help=f"the {other} checkpoint (folder or hub id)")
        p.add_argument("--out", required=True, help="new folder to write")
        p.set_defaults(run=_apply_delta if name == "apply-delta" else _make_delta)

    p = sub.add_parser("upgrade", formatter_class=fmt, help="upgrade an old LLaVA checkpoint's config and weights",
                       description="Rewrite an old config (a plain Llama/Mistral/Qwen2 architecture with mm_* keys) "
                                   "to the LLaVA architecture and convert pickled weights to safetensors. Prints "
                                   "each change; a second run changes nothing.")
    p.add_argument("src", metavar="SRC", help="checkpoint folder")
    p.add_argument("dst", metavar="DST", nargs="?", help="write the upgraded copy here (default: upgrade SRC in place)")
    p.set_defaults(run=_upgrade)

    p = sub.add_parser("merge-lora", formatter_class=fmt, help="merge a LoRA adapter into its base, as a full checkpoint",
                       description="Load the base, the adapter's non-LoRA trainables and the adapter (peft), merge, "
                                   "and write a checkpoint that loads with no base and no peft.")
    p.add_argument("--base", required=True, help="the model the adapter was trained on (folder or hub id)")
    p.add_argument("--adapter", required=True, help="LoRA folder (adapter_config.json, adapter_model.safetensors)")
    p.add_argument("--out", required=True, help="new folder for the merged checkpoint")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="dtype of the merged weights (auto: the adapter config's torch_dtype)")
    p.add_argument("--max-shard-size", type=parse_size, default="5GB", help="largest weights file to write")
    p.set_defaults(run=_merge_lora)


    p = sub.add_parser("export-hf", formatter_class=fmt,
                       help="write an original-layout LLaVA checkpoint in the llava-hf layout",
                       description="Write SRC (original LLaVA layout, e.g. a make-demo checkpoint) as a transformers "
                                   "folder (LlavaOnevisionForConditionalGeneration for OneVision checkpoints, "
                                   "LlavaForConditionalGeneration for LLaVA-1.5-style ones): same weights under "
                                   "transformers' "
                                   "names, config, tokenizer, processor configs, chat template. An audio tower has "
                                   "no llava-hf home: it goes to audio_tower.safetensors beside it.")
    p.add_argument("src", metavar="SRC", help="original-layout checkpoint folder")
    p.add_argument("out", metavar="OUT", help="new folder to write")
    p.set_defaults(run=_export_hf)


def run_checkpoint_command(args: argparse.Namespace) -> int:
    from model_runtime import ConfigError

    try:
        return args.run(args)
    except ConfigError as e:
        print(f"llava-serve {args.command}: error: {e}", file=sys.stderr)
        return 2


def _convert_bin(args: argparse.Namespace) -> int:
    from model_runtime.checkpoint_tools import convert_bin

    report = convert_bin(args.src, args.dst)
    for old, new in report.converted.items():
        print(f"converted {old} -> {args.dst}/{new}")
    for old, why in report.skipped.items():
        print(f"skipped {old}: {why}")
    return 0


def _apply_delta(args: argparse.Namespace) -> int:
    from model_runtime.checkpoint_tools import apply_delta

    report = apply_delta(args.base, args.delta, args.out)
    print(f"wrote {report.num_tensors} tensors ({report.num_copied} without a base counterpart) to {report.out}")
    return 0


def _make_delta(args: argparse.Namespace) -> int:
    from model_runtime.checkpoint_tools import make_delta

    report = make_delta(args.base, args.target, args.out)
    print(f"wrote the delta of {report.num_tensors} tensors to {report.out} "
          f"({report.num_copied} stored as they are, {report.num_float64} in float64 for an exact round trip)")
    return 0


def _upgrade(args: argparse.Namespace) -> int:
    from model_runtime.checkpoint_tools import upgrade_checkpoint

    changes = upgrade_checkpoint(args.src, args.dst)
    for line in changes:
        print(line)
    if not changes:
        print(f"{args.src} is already up to date; nothing changed")
    return 0


def _merge_lora(args: argparse.Namespace) -> int:
    from model_runtime.checkpoint_tools import merge_lora

    out = merge_lora(args.base, args.adapter, args.out, dtype=args.dtype, max_shard_bytes=args.max_shard_size)
    print(f"wrote the merged checkpoint to {out}")
    return 0


def _export_hf(args: argparse.Namespace) -> int:
    from model_runtime.checkpoint_tools import export_hf

    report = export_hf(args.src, args.out)
    print(f"wrote {report['num_tensors']} tensors in the llava-hf layout ({report['architecture']}, "
          f"{report['dtype']}) to {report['out']}")
    if report["left_out"]["tensors"]:
        print(f"audio tower ({report['left_out']['tensors']} tensors) kept in {report['out']}/audio_tower.safetensors")
    return 0
