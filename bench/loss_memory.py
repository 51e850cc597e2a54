"""Peak memory of ZeroSiam's loss and of one adaptation step with a 128k vocabulary, small hidden.

    .venv/bin/python bench/loss_memory.py

Each measurement runs in a fresh subprocess and reads its peak resident memory (ru_maxrss), so
nothing is shared between them. "loss only" feeds (T, H) hidden states through the chunked head
loss (chunk 512) and, for contrast, through one chunk as large as the sequence (the unchunked
cost); "step" is a whole adaptation step (forward, loss, backward, optimizer) of a 2-layer
Llama with vocab 128,256 and hidden 64, minus the same process's peak after loading the model.
Target: the loss part stays flat beyond one chunk.
"""

import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, torch
mode, T, chunk = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
def rss(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB
V, H = 128256, 64
if mode == "loss":
    from zs_llm import AdaptConfig, METHODS
    from zs_llm.objective import head_loss
    head = torch.nn.Linear(H, V, bias=False).requires_grad_(False)
    z = torch.randn(T, H)
    pred = torch.nn.Linear(H, H, bias=False)
    before = rss()
    m = METHODS["zerosiam"](AdaptConfig())
    zz = z.clone().requires_grad_(True)
    head_loss(pred(zz), zz, head, m.token_loss, chunk_size=chunk).backward()
    print(json.dumps({"base": before, "peak": rss()}))
else:
    from transformers import LlamaConfig, LlamaForCausalLM
    from zs_llm import AdaptConfig, ZeroSiamLM
    from zs_llm.adapt import adapt_step
    from zs_llm.methods import LossBatch
    cfg = LlamaConfig(vocab_size=V, hidden_size=H, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192)
    lm = ZeroSiamLM(LlamaForCausalLM(cfg).eval(), None, AdaptConfig(chunk_size=chunk, guard=False), check=False)
    ids = torch.randint(0, V, (1, T + 16))
    before = rss()
    adapt_step(lm, LossBatch(ids, torch.arange(15, 15 + T), ids[0, 16:]))
    print(json.dumps({"base": before, "peak": rss()}))
"""


def measure(mode, t, chunk):
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(t), str(chunk)], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    d = json.loads(out.stdout.strip().splitlines()[-1])
    return d["peak"] - d["base"]


def main():
    print("response tokens | loss only, chunk 512 (MiB) | loss only, one chunk (MiB) | whole step, chunk 512 (MiB)")
    for t in (1024, 2048, 4096):
        unchunked = measure("loss", t, t) if t <= 2048 else float("nan")  # 4k: ~20 GB, past this machine
        print(f"{t:15d} | {measure('loss', t, 512):26.0f} | {unchunked:26.0f} | "
              f"{measure('step', t, 512):27.0f}", flush=True)


if __name__ == "__main__":
    main()
