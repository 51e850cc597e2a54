"""Expected GPU memory of ZeroSiam adaptation for a Llama-shaped model, computed from its shapes.

    .venv/bin/python bench/memory_estimate.py                     # Llama-3.1-8B, 4,096 response tokens
    .venv/bin/python bench/memory_estimate.py --context 2048 --lora-r 16

Counts: bf16 weights; fp32 LoRA (q_proj, v_proj) and predictor with gradient and SGD momentum;
activations saved for backward per token and layer (norm outputs, q/k/v, attention output,
o_proj input, residuals, MLP gate/up/act/down inputs) with and without gradient checkpointing;
the chunked loss's fp32 (chunk x vocab) tensors (about 6 alive at once); the KV cache of the draft.
Estimates, not measurements; framework overhead (CUDA context, allocator slack) comes on top.
"""

import argparse

GB = 1e9


def main():
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
    a = ap.parse_args()
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


if __name__ == "__main__":
    main()
