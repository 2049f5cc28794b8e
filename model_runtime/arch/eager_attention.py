"""`llava_eager`: the SigLIP tower's eager attention (as ORIG runs it), a few heads at a time on the CPU.

ORIG's SigLIP attention is eager: scores = Q K^T * scale, softmax in float32 cast back to the
query's dtype, then the values. Its score tensor is [crops, heads, 729, 729]: 68 MB for the two
crops of a 384x384 image in float32. On the CPU each such tensor is a fresh allocation too big for
the allocator's heap (glibc maps anything over 32 MB straight from the kernel and hands it back on
free), so every layer pays the page faults of three of them (the scores, the scaled scores, the
softmax). Computed a few heads at a time, each slice's scores (4 MiB at most) come from reused heap
memory: one layer of the realistic demo's tower over two crops went from 153-180 ms to 55-78 ms on
a 2-core EPYC (2 threads, float32, `bench/attention_bench.py --tower`; 68 ms whole when glibc is
told not to map, MALLOC_MMAP_MAX_=0, which confirms where the time went), about 2.5 s of a
384x384 image's ~12 s tower. Each slice goes through transformers' own `eager_attention_forward`
(SigLIP's), on operands flattened as its 4-d call flattens them; at the realistic demo's shapes
(and SigLIP's 196 x 64, 576 x 64) the result is the same bits as eager on this machine, and with
every head in one slice it is eager's own calls (torch.equal, test_eager_attention.py). For tiny matrices a GEMM library may pick another
kernel for a smaller batch, so there the last bit can differ. With a mask, or on other devices,
the whole tensor goes in one call, exactly as eager does.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.models.siglip.modeling_siglip import eager_attention_forward

TOWER_ATTN_IMPLEMENTATION = "llava_eager"
CPU_SCORE_SLICE_BYTES = 4 << 20  # the float32 scores of one slice of heads on the CPU (one head of 729 x 729)


def llava_eager_attention(
    module: torch.nn.Module,
    query: torch.Tensor,  # [B, H, Q, Dh]
    key: torch.Tensor,  # [B, H, L, Dh]
    value: torch.Tensor,  # [B, H, L, Dh]
    attention_mask: torch.Tensor | None,  # additive [B or 1, H or 1, Q, L]; given: one call, as eager
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """-> ([B, Q, H, Dh], None); the attention weights are not kept (nothing here asks for them)."""
    batch, heads, q_len, _ = query.shape
    if query.device.type != "cpu" or attention_mask is not None or key.shape[1] != heads:
        return eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout)[0], None
    # (crop, head) pairs flattened as matmul flattens them itself (the same copies, the same GEMM
    # operands: eager transposes the keys back to this view), then a slice of consecutive pairs at a time
    q, k_t, v = (t.reshape(batch * heads, *t.shape[2:]) for t in (query, key.transpose(-1, -2), value))
    step = max(1, CPU_SCORE_SLICE_BYTES // (q_len * key.shape[2] * 4))
    out = query.new_empty(batch * heads, q_len, value.shape[-1])
    for i in range(0, batch * heads, step):
        part = slice(i, i + step)
        result = eager_attention_forward(module, q[part], k_t[part].transpose(-1, -2), v[part], None, scaling, dropout)
        out[part] = result[0].transpose(1, 2)  # eager swaps the last two axes of these 3-d operands' output
    return out.view(batch, heads, q_len, -1).transpose(1, 2).contiguous(), None


AttentionInterface.register(TOWER_ATTN_IMPLEMENTATION, llava_eager_attention)
