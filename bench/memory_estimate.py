"""Expected GPU memory of ZeroSiam adaptation for a Llama-shaped model, computed from its shapes.

    .venv/bin/python bench/memory_estimate.py                     # Llama-3.1-8B, 4,096 response tokens
    .venv/bin/python bench/memory_estimate.py --context 2048 --lora-r 16
    .venv/bin/python bench/memory_estimate.py --context 768 --gpu-gb 80 141   # pooled streams that fit

Counts: bf16 weights; fp32 LoRA (q_proj, v_proj) and predictor with gradient and SGD momentum;
activations saved for backward per token and layer (norm outputs, q/k/v, attention output,
o_proj input, residuals, MLP gate/up/act/down inputs) with and without gradient checkpointing;
the chunked loss's fp32 (chunk x vocab) tensors (about 6 alive at once); the KV cache of the draft.
Estimates, not measurements; framework overhead (CUDA context, allocator slack) comes on top.

Pooled streams (zs_llm.pool): each added stream brings its LoRA and predictor with gradient
and SGD momentum, the copy of both that a step keeps to undo a non-finite update, its draft's
KV cache and kept fp32 logits, and its row of the pooled forward's saved activations; the
weights and the chunked loss (the pool's losses run one stream after another) are paid once.
`streams_that_fit` divides what the weights leave of a GPU by that.
"""

import argparse

GB = 1e9
LLAMA31_8B = dict(hidden=4096, kv_hidden=1024, intermediate=14336, layers=32, vocab=128256, params=8.03e9)


def per_stream_bytes(hidden, kv_hidden, intermediate, layers, vocab, context, new_tokens, lora_r=8,
                     checkpointing=False) -> dict[str, float]:
    """Bytes one more pooled ZeroSiam stream adds, by part (Llama shapes, bf16 weights, fp32
    LoRA on q/v and a linear predictor, SGD with momentum)."""
    h, hk, n, t = hidden, kv_hidden, layers, context
    trained = n * lora_r * ((h + h) + (h + hk)) + h * h
    per_tok_layer = (6 * h + 2 * hk + 4 * intermediate) * 2
    acts = (h * 2 * n * t + per_tok_layer * t) if checkpointing else per_tok_layer * n * t
    return {"LoRA + predictor, grad, momentum (fp32)": trained * 4 * 3,
            "step's undo copy (params + momentum)": trained * 4 * 2,
            "KV cache of the draft (bf16)": 2 * n * hk * 2 * t,
            "draft logits kept (fp32)": new_tokens * vocab * 4,
            "saved activations of its row": acts}


def streams_that_fit(gpu_bytes, params, chunk, vocab, per_stream) -> int:
    """Pooled streams that fit beside the bf16 weights and the chunked loss."""
    free = gpu_bytes - params * 2 - chunk * vocab * 4 * 6
    return max(0, int(free // per_stream))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--kv-hidden", type=int, default=1024)
    ap.add_argument("--intermediate", type=int, default=14336)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--params", type=float, default=8.03e9)
    ap.add_argument("--context", type=int, default=4096 + 512, help="prompt + response tokens")
    ap.add_argument("--chunk", type=int, default=512)
    ap.add_argument("--lora-r", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=512, help="draft tokens per stream (pooled streams)")
    ap.add_argument("--gpu-gb", type=float, nargs="*", default=[80, 141], help="GPU sizes for the pooled streams")
    a = ap.parse_args(argv)
    h, hk, i, n, t = a.hidden, a.kv_hidden, a.intermediate, a.layers, a.context
    weights = a.params * 2
    lora = n * a.lora_r * ((h + h) + (h + hk))
    trained = (lora + h * h) * 4 * 3  # fp32 param, grad, momentum
    per_tok_layer = (6 * h + 2 * hk + 4 * i) * 2  # bf16 saved activations
    acts = per_tok_layer * n * t
    acts_ckpt = h * 2 * n * t + per_tok_layer * t  # layer inputs + one layer recomputed
    loss = a.chunk * a.vocab * 4 * 6
    kv = 2 * n * hk * 2 * t
    rows = [("weights (bf16)", weights), ("LoRA + predictor, grads, SGD state (fp32)", trained),
            ("activations, no checkpointing", acts), ("activations, gradient checkpointing", acts_ckpt),
            (f"chunked loss ({a.chunk} x {a.vocab} fp32, ~6 tensors)", loss), ("KV cache of the draft", kv)]
    print(f"context {t} tokens, LoRA r={a.lora_r} on q/v ({lora / 1e6:.1f}M params), predictor {h}x{h}")
    for name, b in rows:
        print(f"  {name:48s} {b / GB:7.2f} GB")
    base = weights + trained + loss + kv
    print(f"total without checkpointing: {(base + acts) / GB:.1f} GB; with: {(base + acts_ckpt) / GB:.1f} GB")
    fits = {}
    for ckpt in (False, True):
        parts = per_stream_bytes(h, hk, i, n, a.vocab, t, a.new_tokens, a.lora_r, ckpt)
        one = sum(parts.values())
        print(f"\npooled streams, gradient checkpointing {'on' if ckpt else 'off'}: each added stream "
              f"{one / GB:.2f} GB")
        for name, b in parts.items():
            print(f"  {name:48s} {b / GB:7.3f} GB")
        for gb in a.gpu_gb:
            k = streams_that_fit(gb * GB, a.params, a.chunk, a.vocab, one)
            fits[(ckpt, gb)] = k
            print(f"  streams that fit on {gb:g} GB: {k}")
    return fits


if __name__ == "__main__":
    main()
