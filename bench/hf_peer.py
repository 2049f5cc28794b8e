"""Serve llava-serve's demo weights through `transformers serve`, the peer server of the benchmarks.

The same weights, two servers: a demo checkpoint written by `llava-serve make-demo` (ORIG
LLaVA-OneVision layout) is converted into a llava-hf `LlavaOnevisionForConditionalGeneration`
folder that transformers' own classes and `AutoProcessor` load, and `transformers serve` is
started on that folder in a venv of its own (transformers 5.24 with its serving extras), so both
servers can be driven over HTTP with the OpenAI chat-completions API.

  export SRC OUT      `llava-serve export-hf`: ORIG checkpoint -> llava-hf folder (config.json with [h, w] pinpoints,
                      vision_feature_layer -1 over the kept SigLIP layers, anyres_max_N,
                      safetensors under transformers' names, tokenizer, image processor with
                      SigLIP's mean/std, processor config, the checkpoint's own chat template).
                      Audio towers (the `small` demo) have no llava-hf home and are left out.
  compare SRC HF      next-token logits of our model and transformers' on one text prompt and on
                      image prompts (float32), plus each side's token counts per image size;
                      `--python PEER_PY` runs transformers' side in the peer venv
  venv PATH           create the peer venv: torch 2.14.1, torchvision 0.29.1,
                      transformers[serving] 5.24.0
  serve HF            start `transformers serve` on the folder (127.0.0.1, CPU, N torch threads)
                      and print the model name clients must send; Ctrl-C stops it
  probe --port P      one text chat and one 384x384 PNG chat through the openai client,
                      streamed and not, and the latency of max_tokens=1 (time to first token)

Usage (from the repository root):
  .venv/bin/python bench/hf_peer.py export .demo/realistic /tmp/realistic-hf
  .venv/bin/python bench/hf_peer.py compare .demo/realistic /tmp/realistic-hf --python /work/peer-venv/bin/python
  .venv/bin/python bench/hf_peer.py venv /work/peer-venv
  .venv/bin/python bench/hf_peer.py serve /tmp/realistic-hf --port 8011 --python /work/peer-venv/bin/python
  .venv/bin/python bench/hf_peer.py probe --port 8011 --model /tmp/realistic-hf

Only the standard library is imported at module level: `start_peer` and `peer_model_name` work
from any interpreter, and the `hf-logits` subcommand (transformers' side of `compare`) runs under
the peer venv's python (llava-serve's venv has no torchvision, which AutoProcessor needs here).

What a client of the peer must know (transformers serve 5.24, checked on the tiny and realistic
demos):
  - `model` must be exactly the string the server was started with (`peer_model_name`: the
    folder's absolute path); anything else is answered 400.
  - No `ignore_eos` / `min_tokens`: unknown body fields are refused with 422. A fixed output
    length is asked for with its own `generation_config` field, a JSON string that replaces the
    model's generation config: `extra_body=fixed_length_fields(n)` with `max_tokens=n`.
  - `stream_options` is ignored (a warning); the last streamed chunk always carries `usage`.
  - The first streamed chunk (the role) is sent before generation starts, and the text stream
    goes through tokenizers' DecodeStream, which holds text back after tokens that end inside a
    UTF-8 character. The demos' random weights produce such tokens all the time, so streamed text
    is often cut short or empty although `usage` counts every token: time to first token cannot
    be read from the first content delta; time a non-streamed max_tokens=1 request instead.
  - `--continuous-batching` is accepted but used only for text-only models: LlavaOnevision falls
    back to sequential generate() on one inference thread, so requests are served one at a time.
  - `logit_bias` values must be floats (an int makes generate() raise and the connection drop).
  - Images (data URLs, or http(s) URLs the server fetches itself) go through the torchvision
    image processor: pixels differ slightly from ORIG's PIL resizes (logits ~1e-4 apart).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PEER_REQUIREMENTS = ("torch==2.14.1", "torchvision==0.29.1", "transformers[serving]==5.24.0")
PEER_TRANSFORMERS = "5.24.0"
IMAGE_SIZES = ((384, 384), (640, 480), (1920, 1080))  # (W, H)
TEXT_PROMPT = "Describe a sunset over the sea in one sentence."
IMAGE_PROMPT = "What is in this image?"
# environment of the peer process: nothing from the network, torch threads bounded
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_UPDATE_CHECK": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


# -- export ---------------------------------------------------------------------------------
def export_llava_hf(src_dir: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """`llava-serve export-hf` (model_runtime/checkpoint_tools/hf_export.py), from llava-serve's venv."""
    sys.path.insert(0, str(ROOT))
    from model_runtime.checkpoint_tools.hf_export import export_hf

    return export_hf(src_dir, out_dir)


# -- compare ---------------------------------------------------------------------------------
def make_image(width: int, height: int, seed: int = 0):
    """A deterministic RGB image: smooth gradients plus noise (PIL)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed + 7919 * width + height)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([255 * x / max(width - 1, 1), 255 * y / max(height - 1, 1),
                     127.5 + 127.5 * np.sin((x + y) / 37.0)], axis=-1)
    pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def _size_name(size) -> str:
    return f"{size[0]}x{size[1]}"


def hf_logits(hf_dir: str | Path, cases: list[dict], backend: str = "pil") -> list[dict]:
    """transformers' side of `compare`, in whatever interpreter runs it: for each case
    ({"name", "image": PNG path or None, "text", "logits": bool}) the prompt ids, the image token
    count and (if asked) the last position's logits in float32."""
    import torch
    import transformers
    from PIL import Image
    from transformers import AutoImageProcessor, AutoProcessor, LlavaOnevisionForConditionalGeneration

    try:
        processor = AutoProcessor.from_pretrained(str(hf_dir))
    except ImportError as e:  # llava-serve's venv has no torchvision, which the video processor needs
        raise ImportError(f"{e}\nrun transformers' side in the peer venv: compare --python PEER_PYTHON") from e
    # the backend only for images: the video processor has no PIL backend
    processor.image_processor = AutoImageProcessor.from_pretrained(str(hf_dir), backend=backend)
    model = None
    results = []
    for case in cases:
        content = ([{"type": "image"}] if case["image"] else []) + [{"type": "text", "text": case["text"]}]
        prompt = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                               tokenize=False)
        images = [Image.open(case["image"]).convert("RGB")] if case["image"] else None
        inputs = processor(text=prompt, images=images, return_tensors="pt")
        ids = inputs["input_ids"][0].tolist()
        result = {"name": case["name"], "input_ids": ids, "num_image_tokens": ids.count(processor.image_token_id),
                  "transformers": transformers.__version__, "image_processor": type(processor.image_processor).__name__}
        if case["logits"]:
            if model is None:
                model = LlavaOnevisionForConditionalGeneration.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
            with torch.inference_mode():
                result["logits"] = model(**inputs).logits[0, -1].float().clone()
        results.append(result)
    return results


def _our_side(src: Path, cases: list[dict]) -> list[dict]:
    import torch
    from PIL import Image

    sys.path.insert(0, str(ROOT))
    from model_runtime import ChatTurn, load_pretrained_model

    loaded = load_pretrained_model(str(src), dtype="float32")
    model, processor = loaded.model, loaded.processor
    results = []
    for case in cases:
        media = []
        text = case["text"]
        if case["image"]:
            media = [processor.process_image(Image.open(case["image"]).convert("RGB"), single_crop=False)]
            text = "<image>\n" + text
        prompt = processor.build_prompt([ChatTurn("user", text)], media)
        result = {"name": case["name"], "token_ids": prompt.token_ids, "num_tokens": prompt.num_tokens,
                  "num_image_tokens": sum(m.num_tokens for m in media)}
        if case["logits"]:
            with torch.inference_mode():
                items = model.encode_media(media) if media else []
                embeds, mask, positions = model.prepare_inputs_for_multimodal([prompt.token_ids], [items])
                logits = model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).logits
            result["logits"] = logits[0, -1].float().clone()
        results.append(result)
    return results


def compare(src_dir: str | Path, hf_dir: str | Path, sizes=IMAGE_SIZES, logit_sizes=None, python: str | None = None,
            backend: str = "pil", atol: float = 1e-4, timeout: float = 3600, check: bool = True) -> dict[str, Any]:
    """Next-token logits of our model (ORIG folder) and transformers' (llava-hf folder), float32.

    Cases: one text prompt, then one image prompt per size in `sizes` (W, H). Token counts are
    reported for every size; logits are compared for the text prompt and for `logit_sizes`
    (default: all sizes) where both sides give the image the same number of tokens. `python`: run
    transformers' side in that interpreter (the peer venv) instead of this one. `backend`:
    transformers' image processor backend ("pil" reproduces ORIG's PIL resizes; "torchvision" is
    what `transformers serve` picks by default). With `check`, raises AssertionError if a compared
    difference exceeds `atol` or the prompt ids disagree; the report lists them under "failures".
    """
    import torch

    src, hf = Path(src_dir), Path(hf_dir)
    logit_sizes = {tuple(s) for s in (sizes if logit_sizes is None else logit_sizes)}
    report: dict[str, Any] = {"cases": []}
    with tempfile.TemporaryDirectory(prefix="hf_peer_") as tmp:
        cases = [{"name": "text", "image": None, "text": TEXT_PROMPT, "logits": True}]
        for size in sizes:
            path = Path(tmp) / f"{_size_name(size)}.png"
            make_image(*size).save(path)
            cases.append({"name": f"image {_size_name(size)}", "image": str(path), "text": IMAGE_PROMPT,
                          "logits": tuple(size) in logit_sizes})
        if python:
            (Path(tmp) / "cases.json").write_text(json.dumps(cases))
            out = Path(tmp) / "hf.pt"
            subprocess.run([python, str(Path(__file__).resolve()), "hf-logits", str(hf), str(Path(tmp) / "cases.json"),
                            str(out), "--backend", backend], check=True, timeout=timeout,
                           env={**os.environ, **OFFLINE_ENV})
            theirs = torch.load(out)
        else:
            theirs = hf_logits(hf, cases, backend=backend)
        ours = _our_side(src, cases)
    report["transformers"] = theirs[0]["transformers"]
    report["image_processor"] = theirs[0]["image_processor"]
    config = json.loads((hf / "config.json").read_text())
    image_id = config.get("image_token_id", config.get("image_token_index"))
    failures = []
    for case, our, their in zip(cases, ours, theirs, strict=True):
        row = {"case": case["name"], "our_tokens": our["num_tokens"], "hf_tokens": len(their["input_ids"]),
               "our_image_tokens": our["num_image_tokens"], "hf_image_tokens": their["num_image_tokens"]}
        # our ids carry one sentinel per image; theirs N copies of the image id
        collapsed = [t for i, t in enumerate(their["input_ids"])
                     if t != image_id or i == 0 or their["input_ids"][i - 1] != image_id]
        row["text_ids_match"] = [image_id if t < 0 else t for t in our["token_ids"]] == collapsed
        if not row["text_ids_match"]:
            failures.append(f"{case['name']}: prompt ids differ")
        if "logits" in our and "logits" in their:
            if row["our_image_tokens"] != row["hf_image_tokens"]:
                row["max_abs_diff"] = None
                row["note"] = "token counts differ: logits not comparable"
            else:
                a, b = our["logits"], their["logits"]
                width = min(a.shape[-1], b.shape[-1])
                diff = (a[:width] - b[:width]).abs().max().item()
                row["max_abs_diff"] = diff
                row["same_argmax"] = int(a[:width].argmax()) == int(b[:width].argmax())
                if diff > atol:
                    failures.append(f"{case['name']}: max abs diff {diff:.3g} > {atol}")
        report["cases"].append(row)
    report["failures"] = failures
    assert not (check and failures), "; ".join(failures)
    return report


# -- peer venv and server --------------------------------------------------------------------
def peer_venv(path: str | Path, python: str | None = None) -> Path:
    """Create (if missing) a separate venv for the peer and install PEER_REQUIREMENTS into it.

    Returns the venv's python. A venv whose python already imports transformers 5.24.0 and torch
    is left as it is. `python` is the interpreter the venv is made from (default: this one's base).
    pip takes torch/torchvision from the local wheel index this machine's pip is configured with;
    the CUDA build of torch 2.14.1 pulls nvidia-* wheels too (about 5.7 GB installed)."""
    path = Path(path).absolute()
    peer_python = path / "bin" / "python"
    if peer_python.exists():
        probe = subprocess.run([str(peer_python), "-c", "import torch, transformers; print(transformers.__version__)"],
                               capture_output=True, text=True)
        if probe.returncode == 0 and probe.stdout.strip() == PEER_TRANSFORMERS:
            return peer_python
    base = python or getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(path)], check=True)
    subprocess.run([str(peer_python), "-m", "pip", "install", "--quiet", *PEER_REQUIREMENTS], check=True)
    return peer_python


def peer_model_name(model_dir: str | Path) -> str:
    """The `model` clients must send: `transformers serve` pinned to a folder answers only to the
    exact string it was started with (anything else: 400), and start_peer starts it with this."""
    return str(Path(model_dir).resolve())


def _get(url: str, timeout: float = 2.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


def start_peer(model_dir: str | Path, port: int, python: str | Path, threads: int = 2, dtype: str = "bfloat16",
               continuous_batching: bool = False, log_path: str | Path | None = None,
               timeout: float = 900) -> subprocess.Popen:
    """Start `transformers serve` pinned to the llava-hf folder on 127.0.0.1:`port` (CPU, `dtype`,
    at most `threads` torch threads) and wait until /health answers (the pinned model is loaded
    before the server listens). Returns the Popen, in its own process group (stop_peer ends it);
    `proc.model_name` is the name clients must send, `proc.log_path` the server's output (default:
    hf_peer_PORT.log in the temp dir). The hub is never asked (offline variables, no update check).
    `dtype`: "bfloat16" computes like llava-serve's default for the bf16 demos but is several
    times slower than "float32" on CPUs without native bf16. `continuous_batching`: transformers
    5.24 accepts the flag but uses it only for text-only models; LlavaOnevision falls back to
    sequential generate().
    """
    model = peer_model_name(model_dir)
    cmd = [str(python), "-m", "transformers.cli.transformers", "serve", model, "--host", "127.0.0.1",
           "--port", str(port), "--device", "cpu", "--dtype", dtype, "--log-level", "warning"]
    if continuous_batching:
        cmd.append("--continuous-batching")
    threads_env = {name: str(threads) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    env = {**os.environ, **OFFLINE_ENV, **threads_env, "CUDA_VISIBLE_DEVICES": ""}
    log_path = Path(log_path or Path(tempfile.gettempdir()) / f"hf_peer_{port}.log")
    log = open(log_path, "w")  # noqa: SIM115 - owned by the process
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    proc.model_name = model  # type: ignore[attr-defined]
    proc.log_path = log_path  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{port}/health"
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"transformers serve exited with {proc.returncode}:\n{_tail(log_path)}")
        try:
            if _get(url) == 200:
                return proc
        except OSError:
            pass
        if time.monotonic() > deadline:
            stop_peer(proc)
            raise TimeoutError(f"transformers serve did not answer within {timeout:.0f} s:\n{_tail(log_path)}")
        time.sleep(1.0)


def stop_peer(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the peer's process group, SIGKILL it after `grace` seconds."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=grace)
    except ProcessLookupError:
        pass


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# -- probe -----------------------------------------------------------------------------------
def png_data_url(width: int = 384, height: int = 384) -> str:
    import base64
    import io

    buf = io.BytesIO()
    make_image(width, height).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def fixed_length_fields(num_tokens: int) -> dict[str, Any]:
    """Extra body fields that make transformers serve generate exactly `num_tokens` tokens: it has no
    `ignore_eos` (unknown fields are refused with 422) but takes a JSON `generation_config` that
    replaces the model's; min_new_tokens there keeps EOS from being sampled. Send with the openai
    client as `extra_body=fixed_length_fields(n)` together with max_tokens=n."""
    config = {"max_new_tokens": num_tokens, "min_new_tokens": num_tokens, "do_sample": False}
    return {"generation_config": json.dumps(config)}


def probe(port: int, model: str, max_tokens: int = 8, timeout: float = 900) -> list[dict]:
    """One text chat and one chat with a 384x384 PNG data URL through the openai client, each
    non-streamed and streamed with exactly `max_tokens` tokens (fixed_length_fields), then
    non-streamed with max_tokens=1, whose latency is the time to first token (the streamed first
    content delta is not reliable on the peer, see the module docstring)."""
    from openai import OpenAI

    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", timeout=timeout, max_retries=0)
    image = {"type": "image_url", "image_url": {"url": png_data_url()}}
    chats = {
        "text": [{"role": "user", "content": TEXT_PROMPT}],
        "image 384x384": [{"role": "user", "content": [image, {"type": "text", "text": IMAGE_PROMPT}]}],
    }
    results = []
    for name, messages in chats.items():
        for stream, tokens in ((False, max_tokens), (True, max_tokens), (False, 1)):
            fields = {"model": model, "messages": messages, "max_tokens": tokens, "temperature": 0,
                      "extra_body": fixed_length_fields(tokens)}
            row: dict[str, Any] = {"request": name, "stream": stream, "max_tokens": tokens}
            start = time.perf_counter()
            if stream:
                text, first_content, usage, finish = [], None, None, None
                for chunk in client.chat.completions.create(**fields, stream=True):
                    if chunk.usage is not None:
                        usage = chunk.usage.model_dump(exclude_none=True)
                    for choice in chunk.choices:
                        if choice.delta.content and first_content is None:
                            first_content = time.perf_counter() - start
                        text.append(choice.delta.content or "")
                        finish = choice.finish_reason or finish
                row.update(text="".join(text), first_content_s=first_content, usage=usage, finish_reason=finish)
            else:
                reply = client.chat.completions.create(**fields)
                row.update(text=reply.choices[0].message.content, usage=reply.usage.model_dump(exclude_none=True),
                           finish_reason=reply.choices[0].finish_reason)
            row["wall_s"] = round(time.perf_counter() - start, 3)
            results.append(row)
    return results


# -- command line ----------------------------------------------------------------------------
def _parse_size(text: str) -> tuple[int, int]:
    w, h = text.lower().split("x")
    return int(w), int(h)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("export", help="ORIG checkpoint -> llava-hf folder")
    p.add_argument("src")
    p.add_argument("out")
    p = sub.add_parser("compare", help="next-token logits of both models (float32)")
    p.add_argument("src")
    p.add_argument("hf")
    p.add_argument("--python", help="run transformers' side in this interpreter (the peer venv)")
    p.add_argument("--sizes", nargs="+", type=_parse_size, default=list(IMAGE_SIZES), help="image sizes WxH")
    p.add_argument("--logit-sizes", nargs="*", type=_parse_size, help="sizes whose logits are compared (default all)")
    p.add_argument("--backend", default="pil", choices=("pil", "torchvision"))
    p.add_argument("--atol", type=float, default=1e-4)
    p = sub.add_parser("venv", help="create the peer venv")
    p.add_argument("path")
    p = sub.add_parser("serve", help="run transformers serve on a llava-hf folder until Ctrl-C")
    p.add_argument("hf")
    p.add_argument("--port", type=int, default=8011)
    p.add_argument("--python", default="/work/peer-venv/bin/python")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--continuous-batching", action="store_true")
    p = sub.add_parser("probe", help="text + 384x384 image chats through the openai client")
    p.add_argument("--port", type=int, default=8011)
    p.add_argument("--model", required=True, help="the folder the peer was started with")
    p.add_argument("--max-tokens", type=int, default=8)
    p = sub.add_parser("hf-logits", help="internal: transformers' side of compare --python")
    p.add_argument("hf")
    p.add_argument("cases")
    p.add_argument("out")
    p.add_argument("--backend", default="pil")
    args = parser.parse_args(argv)

    if args.command == "export":
        start = time.perf_counter()
        report = export_llava_hf(args.src, args.out)
        print(json.dumps(report, indent=2))
        print(f"exported in {time.perf_counter() - start:.1f} s")
    elif args.command == "compare":
        report = compare(args.src, args.hf, sizes=args.sizes, logit_sizes=args.logit_sizes, python=args.python,
                         backend=args.backend, atol=args.atol, check=False)
        print(f"transformers {report['transformers']} ({report['image_processor']})")
        print(f"{'case':18s} {'ours':>6s} {'hf':>6s} {'img ours':>8s} {'img hf':>7s} {'ids':>4s} {'max |diff|':>11s}")
        for row in report["cases"]:
            diff = row.get("max_abs_diff", "-")
            diff = f"{diff:.3g}" if isinstance(diff, float) else str(diff if diff is not None else row.get("note"))
            print(f"{row['case']:18s} {row['our_tokens']:6d} {row['hf_tokens']:6d} {row['our_image_tokens']:8d} "
                  f"{row['hf_image_tokens']:7d} {'ok' if row['text_ids_match'] else 'DIFF':>4s} {diff:>11s}")
        for failure in report["failures"]:
            print(f"FAILED: {failure}")
        if report["failures"]:
            return 1
    elif args.command == "venv":
        start = time.perf_counter()
        python = peer_venv(args.path)
        size = subprocess.run(["du", "-sh", args.path], capture_output=True, text=True).stdout.split()[0]
        print(f"{python} ready in {time.perf_counter() - start:.0f} s ({size})")
    elif args.command == "serve":
        start = time.perf_counter()
        proc = start_peer(args.hf, args.port, args.python, threads=args.threads, dtype=args.dtype,
                          continuous_batching=args.continuous_batching)
        print(f"transformers serve on http://127.0.0.1:{args.port}/v1 after {time.perf_counter() - start:.0f} s; "
              f"model name: {proc.model_name}; log: {proc.log_path}", flush=True)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # the peer has its own session: end it too
        try:
            proc.wait()
        except KeyboardInterrupt:
            pass
        finally:
            stop_peer(proc)
    elif args.command == "probe":
        for row in probe(args.port, args.model, args.max_tokens):
            print(json.dumps(row))
    elif args.command == "hf-logits":
        import torch

        torch.save(hf_logits(args.hf, json.loads(Path(args.cases).read_text()), backend=args.backend), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
