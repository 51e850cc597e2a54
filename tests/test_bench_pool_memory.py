"""bench/memory_estimate.py's pooled-stream figures, from shapes (no GPU), and bench/pooled_streams.py's logic on a tiny model."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import memory_estimate as me  # noqa: E402


def test_per_stream_memory_counts_each_part_from_shapes():
    s = me.LLAMA31_8B
    parts = me.per_stream_bytes(s["hidden"], s["kv_hidden"], s["intermediate"], s["layers"], s["vocab"],
                                context=1000, new_tokens=500)
    trained = 32 * 8 * (8192 + 5120) + 4096 * 4096  # LoRA q/v + predictor
    assert parts["LoRA + predictor, grad, momentum (fp32)"] == trained * 12
    assert parts["KV cache of the draft (bf16)"] == 2 * 32 * 1024 * 2 * 1000  # 131 MB at 1k tokens
    assert parts["draft logits kept (fp32)"] == 500 * 128256 * 4
    ckpt = me.per_stream_bytes(*[s[k] for k in ("hidden", "kv_hidden", "intermediate", "layers", "vocab")],
                               context=1000, new_tokens=500, checkpointing=True)
    assert ckpt["saved activations of its row"] < parts["saved activations of its row"] / 10


def test_more_memory_fits_more_streams():
    fits = me.main(["--context", "768", "--new-tokens", "256", "--gpu-gb", "80", "141"])
    for ckpt in (False, True):
        assert 0 < fits[(ckpt, 80)] < fits[(ckpt, 141)]
    assert fits[(True, 141)] > fits[(False, 141)]
    assert me.streams_that_fit(16e9, 8.03e9, 512, 128256, 1e9) == 0  # the weights alone fill it


def test_pooled_streams_bench_runs_on_a_tiny_model():
    import pooled_streams

    report = pooled_streams.main(["--model", "tiny", "--streams", "1", "2", "--tokens", "4", "--problems", "2"])
    assert report["sequential_ppm"] > 0 and set(report["pools"]) == {1, 2}
    for r in report["pools"].values():
        assert r["rows"] == 2 * min(2, 2) or r["rows"] > 0
        assert r["differ"] == 0  # fp32 tiny model: pooled drafts are the sequential ones
