"""The Llama-3.1-8B recipe's own path, end to end on a CPU, with a small random model of Llama-3.1's
shape in its place: what would otherwise fail on a GPU hours into the real run.

The model folder made here has Llama-3.1's vocabulary (128,256), grouped-query attention, RoPE
scaling of type llama3 with Llama-3.1's factors, its special tokens at their ids and a chat
template (our own) that writes the Llama 3.1 chat format; it is saved in bf16. The recipe runs
from its YAML with only the model, the sets (subsets of short problems), --limit 2, the data and
the prompt file changed: bf16, gradient checkpointing, 4,096 new tokens and every method of the
recipe stay as they are. The model is
rigged so that its greedy answer is "\\boxed{8}" followed by <|eot_id|> after any prompt: the
drafts stop at eot_id long before 4,096 tokens, and one CollegeMath problem (7-5+6) is answered
right, one wrong. Short problems keep it quick: SLOT's loss runs over whole prompts through a
128,256-wide bf16 head, and CPU bf16 matmuls are slow.
"""

import json
import string
from pathlib import Path

import pytest
import torch

from eval import report
from eval.report import load_run
from recipes import llama31_8b_math as recipe
from recipes._common import resolve

VOCAB = 128_256
HIDDEN = 16  # the head is 128,256 x HIDDEN: CPU bf16 matmuls this wide are slow
BOS, EOT, START_HEADER, END_HEADER = 128_000, 128_009, 128_006, 128_007
EOS_IDS = [128_001, 128_008, EOT]  # Llama-3.1-Instruct's generation config: end_of_text, eom_id, eot_id
NAMED = {128_000: "<|begin_of_text|>", 128_001: "<|end_of_text|>", 128_004: "<|finetune_right_pad_id|>",
         128_006: "<|start_header_id|>", 128_007: "<|end_header_id|>", 128_008: "<|eom_id|>", 128_009: "<|eot_id|>",
         128_010: "<|python_tag|>"}
ANSWER = "\\boxed{8}"  # one token of the made-up tokenizer
METHODS = ["noadapt", "tent", "come", "sar", "slot", "eminf", "zerosiam", "zerosiam+sar", "zerosiam+eata",
           "tent+guard", "zerosiam+guard"]
PREDICTOR_METHODS = {"zerosiam", "zerosiam+sar", "zerosiam+eata", "zerosiam+guard"}
COLLEGE_IDS = ["Beginning_and_Intermediate_Algebra/exercise.1.3.7",  # Solve: $0=-8(p-5)$ (gold 5)
               "Beginning_and_Intermediate_Algebra/exercise.0.3.6"]  # Solve: $7-5+6$ (gold 8)
# a subset file in no particular order: the subset keeps Math-500's order, --limit 2 its first two
MATH500_FILE = ["test/algebra/1255.json", "test/algebra/1098.json", "test/prealgebra/1302.json"]
MATH500_IDS = ["test/algebra/1098.json", "test/prealgebra/1302.json"]  # problems 20 and 31
PROMPT_FILE = "<|start_header_id|>user<|end_header_id|>\n\nMade-up rules.\n\nProblem: {question}<|eot_id|>\n"
DATA_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "math"

KNOWLEDGE = "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
# Our own Jinja template for the Llama 3.1 chat format: begin_of_text, a system turn that always
# carries the knowledge-date lines, each turn between header tokens and closed by eot_id, and the
# assistant header opened for generation.
CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if messages and messages[0]['role'] == 'system' %}"
    "{%- set system = messages[0]['content'] | trim %}{%- set messages = messages[1:] %}"
    "{%- else %}{%- set system = '' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{{- '" + KNOWLEDGE.replace("\n", "\\n") + "' + system + '<|eot_id|>' }}"
    "{%- for m in messages %}"
    "{{- '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)


PIECES = r"\s?\w+|\s?[^\w\s]|\s+"  # a word or a symbol with its leading space, or a run of whitespace


def llama31_tokenizer(corpus: str):
    """Word-level: the pieces of `corpus` (PIECES), the printable characters, the answer as one
    token, fillers up to 128,000 and Llama-3.1's 256 special tokens at their ids (unnamed ones as
    reserved tokens). Word-sized tokens keep prompts as short as a real tokenizer's: SLOT's loss
    runs over every prompt token, through a bf16 head 128,256 wide."""
    import re

    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0}
    for piece in [*string.printable, ANSWER, *re.findall(PIECES, corpus)]:
        vocab.setdefault(piece, len(vocab))
    vocab.update({f"<w{i}>": i for i in range(len(vocab), BOS)})
    reserved = iter(range(VOCAB))
    specials = [NAMED.get(i) or f"<|reserved_special_token_{next(reserved)}|>" for i in range(BOS, VOCAB)]
    vocab.update({t: BOS + i for i, t in enumerate(specials)})
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(PIECES), behavior="isolated")
    tk.decoder = decoders.Fuse()
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token=NAMED[BOS], eos_token=NAMED[EOT])
    tok.chat_template = CHAT_TEMPLATE
    return tok, vocab


def llama31_model(vocab: dict[str, int], hidden: int = HIDDEN):
    """A 2-layer Llama with Llama-3.1-8B's vocabulary, grouped-query attention (2 KV heads for 4),
    RoPE (llama3 scaling, theta 500,000, 131,072 positions) and untied head, rigged so that its
    greedy answer after any prompt is ANSWER, then eot_id."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=131_072,
                      rope_theta=500_000.0, rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                         "high_freq_factor": 4.0,
                                                         "original_max_position_embeddings": 8192},
                      rms_norm_eps=1e-5, bos_token_id=BOS, eos_token_id=EOS_IDS, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    # Every prompt ends in "\n\n" (after the assistant header). That token and the answer's get an
    # embedding axis each, large against what two random layers add, and the head reads the axis
    # as the next token: "\n\n" -> ANSWER -> eot_id. A margin of 14 nats over 128,256 tokens puts
    # ~0.9 on the greedy token: decoding is fixed, the entropy (~1.6 nats) passes SAR's and
    # EATA's filters (0.4 ln K = 4.7) and the losses keep their gradients.
    chain = [vocab["\n\n"], vocab[ANSWER], EOT]
    with torch.no_grad():
        emb, head = model.model.embed_tokens.weight, model.lm_head.weight
        for axis, (token, nxt) in enumerate(zip(chain, chain[1:])):
            emb[token] = 0.0
            emb[token, axis] = 4.0
            head[nxt, axis] += 14.0 / hidden**0.5  # the final norm scales the axis to sqrt(hidden)
    model.generation_config = GenerationConfig(bos_token_id=BOS, eos_token_id=EOS_IDS, do_sample=False)
    return model.to(torch.bfloat16)


@pytest.fixture(scope="module")
def llama31_dir(tmp_path_factory):
    from eval.datasets import load_problems

    if not DATA_DIR.is_dir():
        pytest.skip(f"local math data not found at {DATA_DIR}")
    d = tmp_path_factory.mktemp("llama31_shaped")
    files = {"college_math": COLLEGE_IDS, "math500": MATH500_FILE}
    questions = []
    for name, ids in files.items():
        (d.parent / f"{name}_ids.txt").write_text(f"# short {name} problems\n" + "\n".join(ids) + "\n")
        questions += [p.question for p in load_problems(name, data_dir=DATA_DIR, subset=str(d.parent / f"{name}_ids.txt"))]
    # the recipe's Meta prompt comes from the hub or a file: a made-up one in Llama 3 header tokens
    (d.parent / "prompt.txt").write_text(PROMPT_FILE)
    tok, vocab = llama31_tokenizer("system user assistant " + KNOWLEDGE
                                   + "".join(PROMPT_FILE.format(question=q) for q in questions))
    llama31_model(vocab).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def recipe_cfg(model_dir: Path, out: Path, *extra: str) -> dict:
    """The recipe's YAML with what a CPU run must change: the model, two sets (subsets of short
    problems), two problems each, the prompt file and the output folder. Streams run one after
    another (the spies watch that path); `test_the_pooled_recipe_gives_the_same_rows` runs the pool."""
    subsets = ",".join(f"{name}={model_dir.parent / f'{name}_ids.txt'}" for name in ("math500", "college_math"))
    return resolve(recipe.CONFIG, ["--model", str(model_dir), "--datasets", "math500,college_math", "--limit", "2",
                                   "--subset", subsets, "--prompt_template", str(model_dir.parent / "prompt.txt"),
                                   "--out", str(out), "--data_dir", str(DATA_DIR), "--stream_batch", "1", *extra])


class Spies:
    """Wraps the library at the points where the 8B path decides precision and memory."""

    def __init__(self, mp: pytest.MonkeyPatch):
        import zs_llm.adapt as adapt
        import zs_llm.methods.base as base
        from zs_llm.model import ZeroSiamLM
        from zs_llm.predictor import LinearPredictor

        self.keep, self.losses, self.predictor, self.steps, self.drafts = [], [], [], [], []
        keep, head_loss, step, generate, pred_map = (adapt._keep_draft_logits, base.head_loss, adapt.adapt_step,
                                                     ZeroSiamLM.generate_ids, LinearPredictor._map)

        def spy_keep(lm):
            # (method, kept, whether only the draft_logits_mib budget could have said no)
            budget_decides = lm.method.uses_predictor and lm.method.head_pre_hook(lm) is None
            self.keep.append((lm.zs_config.label(), keep(lm), budget_decides))
            return self.keep[-1][1]

        def spy_head_loss(z_online, z_target, head_fn, token_loss, **kw):
            seen = {"z_online": z_online.dtype, "z_target": None if z_target is None else z_target.dtype,
                    "target_logits": kw.get("target_logits") is not None}

            def spy_token_loss(online_logits, target_logp, labels, target_p=None):
                seen.update(online_logits=online_logits.dtype, target_logp=target_logp.dtype)
                return token_loss(online_logits, target_logp, labels, target_p)

            self.losses.append(seen)
            return head_loss(z_online, z_target, head_fn, spy_token_loss, **kw)

        def spy_step(lm, batch, problem_id=None):
            lora = {n: p.detach().clone() for n, p in lm.named_trainable()}
            frozen = {n: p.detach().clone() for n, p in lm.hf.named_parameters() if "q_proj.base_layer" in n}
            record = {
                "method": lm.zs_config.label(),
                "checkpointing": lm.hf.training and all(layer.gradient_checkpointing for layer in lm.backbone.layers),
                "trainable": {n: p.dtype for n, p in lm.named_trainable()},
                "frozen": {p.dtype for p in lm.hf.parameters() if not p.requires_grad},
                "frozen_trainable": [n for n, p in lm.hf.named_parameters() if p.requires_grad and "lora_" not in n]}
            stats = step(lm, batch, problem_id)
            record["moved"] = sorted(n for n, p in lm.named_trainable() if not torch.equal(lora[n], p))
            record["base_moved"] = [n for n, p in lm.hf.named_parameters() if n in frozen and not torch.equal(frozen[n], p)]
            record["stats"] = stats
            self.steps.append(record)
            return stats

        def spy_generate(lm, input_ids, *args, **kw):
            out = generate(lm, input_ids, *args, **kw)
            new = out[0] if isinstance(out, tuple) else out
            self.drafts.extend((lm.zs_config.label(), row.tolist()) for row in new)
            return out

        def spy_map(pred, z):
            self.predictor.append((z.dtype, pred.weight.dtype))
            return pred_map(pred, z)

        mp.setattr(adapt, "_keep_draft_logits", spy_keep)
        mp.setattr(base, "head_loss", spy_head_loss)
        mp.setattr(adapt, "adapt_step", spy_step)
        mp.setattr(ZeroSiamLM, "generate_ids", spy_generate)
        mp.setattr(LinearPredictor, "_map", spy_map)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Every matmul here is tiny but for the head: with two threads each one waits for the other
    # thread, which on a busy 2-core machine cost ~10 ms a call (the run took 4x longer).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def recipe_run(llama31_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "llama31"
    with pytest.MonkeyPatch.context() as mp:
        spies = Spies(mp)
        # report.md is written; its PNGs are not (seconds each on a CPU, and tested in test_eval_harness)
        mp.setattr(report, "plot_accuracy", lambda *a, **k: None)
        mp.setattr(report, "plot_diagnostics", lambda *a, **k: None)
        path = recipe.main(recipe_cfg(llama31_dir, out))
    return path, spies


def without_timings(row: dict) -> dict:
    """A row without wall-clock fields (the only ones a rerun may change)."""
    row = {k: v for k, v in row.items() if k != "timings"}
    row["steps"] = [{k: v for k, v in s.items() if k != "time_s"} for s in row["steps"]]
    return row


def test_recipe_runs_every_method_in_bf16_with_checkpointing(recipe_run):
    path, _ = recipe_run
    info = json.loads((path / "run.json").read_text())
    assert info["config"]["dtype"] == "bfloat16" and info["config"]["methods"] == METHODS
    streams = load_run(path)
    assert set(streams) == {(m, d) for m in METHODS for d in ("math500", "college_math")}
    assert all(len(rows) == 2 for rows in streams.values())
    # the subsets are recorded whole (3 and 2 ids); --limit 2 then took the first two of each
    subsets = info["subsets"]
    assert (subsets["math500"]["n"], subsets["math500"]["of"], subsets["college_math"]["n"]) == (3, 500, 2)
    assert [r["id"] for r in streams[("noadapt", "math500")]] == MATH500_IDS
    for (method, _), rows in streams.items():
        for row in rows:
            assert row["config"]["gradient_checkpointing"] is True and row["config"]["max_new_tokens"] == 4096
            assert row["config"]["guard"] is method.endswith("+guard") and row["config"]["grad_clip"] is None
    # the rigged answer is extracted and graded: wrong on 0=-8(p-5), right on 7-5+6
    for m in METHODS:
        college = streams[(m, "college_math")]
        assert [r["id"] for r in college] == COLLEGE_IDS
        assert [(r["extracted"], r["correct"]) for r in college] == [("8", False), ("8", True)], m
    report = (path / "report.md").read_text()
    assert "| zerosiam+guard |" in report and "| tent+guard |" in report
    assert "Subset of college_math" in report


def test_precision_rules_hold_on_the_bf16_path(recipe_run):
    _, spies = recipe_run
    adapting = {"tent", "come", "sar", "zerosiam", "zerosiam+sar", "zerosiam+eata", "tent+guard", "zerosiam+guard"}
    assert {s["method"] for s in spies.steps} == adapting
    for s in spies.steps:
        assert s["checkpointing"], s["method"]
        assert s["frozen"] == {torch.bfloat16}, s["method"]  # base weights stay bf16, none upcast
        assert not s["frozen_trainable"], s["method"]
        assert set(s["trainable"].values()) == {torch.float32}, s["method"]  # LoRA (and predictor) in fp32
        assert any("lora_B" in n for n in s["trainable"])
        assert (any(n.startswith("predictor.") for n in s["trainable"])) is (s["method"] in PREDICTOR_METHODS)
        assert not s["stats"]["skipped"], s["method"]
        assert any("lora_B" in n for n in s["moved"]) and not s["base_moved"], s["method"]
        if s["method"] in PREDICTOR_METHODS:
            assert "predictor.weight" in s["moved"] and s["stats"]["predictor_dev"] > 0
    # the loss reads fp32 logits on both branches, whatever the model's dtype
    assert spies.losses and all(x["online_logits"] == x["target_logp"] == torch.float32 for x in spies.losses)
    # the predictor multiplies in fp32 with fp32 weights; the features it gets are the bf16 model's
    assert spies.predictor and set(spies.predictor) == {(torch.float32, torch.float32)}
    assert {x["z_target"] for x in spies.losses if x["z_target"] is not None} == {torch.bfloat16}


def test_drafts_of_4096_tokens_recompute_the_target_branch(recipe_run):
    _, spies = recipe_run
    # the budget: 4,096 tokens x 128,256 x 4 bytes = 2 GiB of kept logits, more than draft_logits_mib
    assert 4096 * VOCAB * 4 > 512 * 2**20
    assert spies.keep and not any(kept for _, kept, _ in spies.keep)
    assert {m for m, _, budget_decides in spies.keep if budget_decides} == PREDICTOR_METHODS
    predictor_losses = [x for x in spies.losses if x["z_target"] is not None]
    assert len(predictor_losses) == sum(s["method"] in PREDICTOR_METHODS for s in spies.steps)
    assert not any(x["target_logits"] for x in spies.losses)  # every target came from the features


def test_chat_tokens_in_the_prompt_and_drafts_stop_at_eot(recipe_run, llama31_dir):
    from transformers import AutoTokenizer

    path, spies = recipe_run
    tok = AutoTokenizer.from_pretrained(llama31_dir)
    assert tok.eos_token_id == EOT
    streams = load_run(path)
    row = streams[("zerosiam", "math500")][0]
    assert row["prompt"].startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n")
    assert "<|start_header_id|>user<|end_header_id|>\n\nMade-up rules.\n\nProblem: " in row["prompt"]
    assert row["prompt"].endswith("<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    ids = tok(row["prompt"], add_special_tokens=False).input_ids
    assert ids[0] == BOS and ids.count(START_HEADER) == ids.count(END_HEADER) == 3 and ids.count(EOT) == 2
    assert row["tokens"]["prompt"] == len(ids)  # the header tokens went in as single special tokens
    answer_ids = [tok.convert_tokens_to_ids(ANSWER), EOT]
    assert spies.drafts and {m for m, _ in spies.drafts} == set(METHODS)
    for method, new in spies.drafts:
        assert new[: len(answer_ids)] == answer_ids, method  # stopped at eot_id, 4,086 tokens before the limit
        assert set(new[len(answer_ids):]) <= {EOT}, method  # batched rows pad with eos
    for (method, _), rows in streams.items():
        for r in rows:
            assert r["response"] == ANSWER, method
            if r["tokens"]:
                assert r["tokens"]["draft"] == len(answer_ids), method


class Stopped(Exception):
    """Stands for the run being killed."""


def test_a_stopped_run_resumes_to_the_same_rows(recipe_run, llama31_dir, tmp_path):
    import zs_llm.adapt as adapt

    full = load_run(recipe_run[0])
    out = tmp_path / "resumed"
    cfg = recipe_cfg(llama31_dir, out, "--methods", "zerosiam")
    real, calls = adapt.adapt_round, []

    def stop_on_the_fourth(items):
        calls.extend(pid for _, _, pid in items)
        if len(calls) == 4:  # the second problem of the second stream: its first is checkpointed
            raise Stopped
        return real(items)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(adapt, "adapt_round", stop_on_the_fourth)
        with pytest.raises(Stopped):
            recipe.main(cfg)
    rows_dir = out / "rows"
    first = (rows_dir / "zerosiam__math500.jsonl").read_bytes()
    assert len((rows_dir / "zerosiam__college_math.jsonl").read_text().splitlines()) == 1
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(report, "write_report", lambda path: Path(path) / "report.md")  # plots: seconds, tested above
        recipe.main(cfg)
    assert (rows_dir / "zerosiam__math500.jsonl").read_bytes() == first  # a finished stream is not redone
    resumed = load_run(out)
    for d in ("math500", "college_math"):
        assert [without_timings(r) for r in resumed[("zerosiam", d)]] == \
            [without_timings(r) for r in full[("zerosiam", d)]]
    # the resumed problem continued from the checkpoint: its predictor had already moved once
    assert resumed[("zerosiam", "college_math")][1]["steps"][0]["predictor_dev"] > \
        resumed[("zerosiam", "college_math")][0]["steps"][0]["predictor_dev"]


def test_the_pooled_recipe_gives_the_same_rows(recipe_run, llama31_dir, tmp_path):
    """The recipe as a GPU runs it, every adapting stream pooled (bf16, per-row LoRA, one
    forward and backward over the pool): same rows as one stream at a time."""
    full = load_run(recipe_run[0])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(report, "write_report", lambda path: Path(path) / "report.md")
        path = recipe.main(recipe_cfg(llama31_dir, tmp_path / "pooled", "--stream_batch", "8"))
    pooled = load_run(path)
    assert pooled.keys() == full.keys()
    for key, rows in full.items():
        got = pooled[key]
        assert [r["response"] for r in got] == [r["response"] for r in rows], key
        for a, b in zip(got, rows):
            assert len(a["steps"]) == len(b["steps"]), key
            for sa, sb in zip(a["steps"], b["steps"]):
                for k in ("loss", "entropy"):
                    if k in sb and sb[k] is not None:
                        assert sa[k] == pytest.approx(sb[k], rel=2e-2, abs=2e-2), (key, k)
