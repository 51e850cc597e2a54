"""Tiny random models and a character tokenizer, for tests, benchmarks and demos with no downloads."""

from __future__ import annotations

import string

import torch

CHARS = string.printable  # 100 characters
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}<|user|>{{ m['content'] }}"
    "{% elif m['role'] == 'assistant' %}<|assistant|>{{ m['content'] }}</s>{% else %}{{ m['content'] }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def char_tokenizer(chat_template: bool = True):
    """A real `PreTrainedTokenizerFast`, one token per printable character plus specials."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + [c for c in CHARS])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tk.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                  unk_token="<unk>", additional_special_tokens=["<|user|>", "<|assistant|>"])
    if chat_template:
        tok.chat_template = CHAT_TEMPLATE
    return tok


VOCAB = len(SPECIALS) + len(CHARS)


def tiny_config(arch: str, vocab_size: int = VOCAB, hidden: int = 32, layers: int = 2):
    """A config of `arch` small enough to run a step in milliseconds."""
    import transformers as tf

    common = dict(vocab_size=vocab_size, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    decoder = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=2048, **common)
    if arch == "llama":
        return tf.LlamaConfig(**decoder)
    if arch == "qwen2":
        return tf.Qwen2Config(**decoder)
    if arch == "mistral":
        return tf.MistralConfig(**decoder)
    if arch == "gemma2":
        return tf.Gemma2Config(**decoder, head_dim=hidden // 4, final_logit_softcapping=5.0, attn_logit_softcapping=50.0,
                               query_pre_attn_scalar=hidden // 4, sliding_window=64)
    if arch == "gpt_neox":
        return tf.GPTNeoXConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                                num_attention_heads=4, max_position_embeddings=2048, **common)
    if arch == "gpt2":
        return tf.GPT2Config(n_embd=hidden, n_layer=layers, n_head=4, n_positions=2048, **common)
    if arch == "phi3":  # fused qkv_proj and gate_up_proj: no peft default
        return tf.Phi3Config(**decoder)
    if arch == "falcon":
        return tf.FalconConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4, **common)
    if arch == "cohere":  # logit_scale after the head
        return tf.CohereConfig(**decoder)
    if arch == "olmo2":
        return tf.Olmo2Config(**decoder)
    if arch == "starcoder2":
        return tf.Starcoder2Config(**decoder)
    raise ValueError(f"no tiny config for {arch!r}; choose one of {ARCHS + MORE_ARCHS}")


ARCHS = ("llama", "qwen2", "mistral", "gemma2", "gpt_neox", "gpt2")
#: architectures peft has no LoRA default for (or a fused one): zs_llm finds their projections
MORE_ARCHS = ("phi3", "falcon", "cohere", "olmo2", "starcoder2")


def tiny_model(arch: str = "llama", seed: int = 0, **kw):
    """A randomly initialised causal LM of `arch` (float32, eval mode)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, **kw))
    # random heads are near-uniform; a larger init makes the logits (and entropies) less flat
    return model.eval()
