"""The adapted state leaves the harness and the library as folders others load: each finished
online stream is exported to <run>/adapters/<stream>/, which ZeroSiamLM.from_pretrained and
peft.PeftModel.from_pretrained both load; ZeroSiamLM pushes to and loads from the Hub (faked here:
tests never download)."""

import hashlib
import json
import shutil

import pytest
import torch

from eval.runner import RunConfig, Runner
from zs_llm import ZeroSiamLM
from zs_llm.adapt import adapt_on_problem
from zs_llm.testing import tiny_model

IDS = torch.tensor([[7, 20, 31, 42, 53, 64]])  # (1, T) a fixed input for the logits


def lora(named) -> dict[str, torch.Tensor]:
    """LoRA tensors by their name inside the base model (a PeftModel prefixes base_model.model.)."""
    return {n.removeprefix("base_model.model."): p.detach().clone() for n, p in named if "lora_" in n}


@pytest.fixture
def finished_stream(tiny_dir, tmp_path, monkeypatch):
    """A ZeroSiam stream run by the harness, with its final LoRA, predictor and logits recorded."""
    final = {}
    stream = Runner._stream

    def spy(self, lm, *args, **kw):
        stream(self, lm, *args, **kw)
        with torch.no_grad():
            final.update(lora=lora(lm.hf.named_parameters()), predictor=lm.predictor.state_dict(),
                         logits=lm.hf(IDS).logits.clone(), state={k: v.clone() for k, v in lm.state_tensors().items()})

    monkeypatch.setattr(Runner, "_stream", spy)
    cfg = RunConfig(model=str(tiny_dir), methods=["zerosiam"], datasets=["arith"], limit=3, stream_batch=1,
                    adapt={"max_new_tokens": 5, "lr": 0.05, "predictor_lr": 0.05})
    out = Runner(cfg, tmp_path / "run", progress=False).run()
    return out, final


def test_a_finished_stream_is_exported_and_loads_both_ways(finished_stream, tiny_dir, tok):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out, final = finished_stream
    folder = out / "adapters" / "zerosiam__arith"
    assert {"adapter_config.json", "adapter_model.safetensors", "predictor.safetensors",
            "zs_llm_config.json"} <= {p.name for p in folder.iterdir()}
    assert not list((out / "adapters").glob(".*"))  # no temporary left
    assert any(v.abs().max() > 0 for k, v in final["lora"].items() if "lora_B" in k)  # LoRA moved off zero
    assert not torch.equal(final["predictor"]["weight"], torch.eye(final["predictor"]["weight"].shape[0]))

    lm = ZeroSiamLM.from_pretrained(folder)  # the base model recorded in the folder (the tiny one)
    for k, v in final["state"].items():
        assert torch.equal(lm.state_tensors()[k], v), k
    with torch.no_grad():
        assert torch.allclose(lm.hf(IDS).logits, final["logits"], atol=1e-6)

    base = AutoModelForCausalLM.from_pretrained(tiny_dir)
    peft_model = PeftModel.from_pretrained(base, folder).eval()
    got = lora(peft_model.named_parameters())
    assert got.keys() == final["lora"].keys()
    for k, v in final["lora"].items():
        assert torch.equal(got[k], v), k
    with torch.no_grad():
        assert torch.allclose(peft_model(IDS).logits, final["logits"], atol=1e-6)


def test_a_resumed_run_exports_a_missing_adapter_again(finished_stream, tiny_dir):
    out, final = finished_stream
    folder = out / "adapters" / "zerosiam__arith"
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.suffix == ".safetensors"}
    shutil.rmtree(folder)
    cfg = RunConfig(**json.loads((out / "run.json").read_text())["config"])
    Runner(cfg, out, progress=False).run()  # every row is there: the last checkpoint is exported
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.suffix == ".safetensors"} == before


class FakeHub:
    """HfApi and snapshot_download over a local folder per repository."""

    def __init__(self, root):
        self.root, self.calls = root, []
        hub = self

        class Api:
            def __init__(self, token=None):
                hub.calls.append(("token", token))

            def create_repo(self, repo_id, private=None, exist_ok=False):
                hub.calls.append(("create_repo", repo_id, private))

            def upload_folder(self, repo_id, folder_path, commit_message=None, revision=None):
                hub.calls.append(("upload_folder", repo_id, sorted(p.name for p in __import__("pathlib").Path(
                    folder_path).iterdir())))
                shutil.copytree(folder_path, hub.root / repo_id, dirs_exist_ok=True)
                return f"https://huggingface.co/{repo_id}/commit/0"

        self.Api = Api

    def snapshot_download(self, repo_id, revision=None, **kw):
        self.calls.append(("snapshot_download", repo_id, revision))
        return str(self.root / repo_id)


def test_push_to_hub_and_from_pretrained_with_a_hub_id(make_lm, tok, tmp_path, monkeypatch):
    import huggingface_hub

    hub = FakeHub(tmp_path / "hub")
    monkeypatch.setattr(huggingface_hub, "HfApi", hub.Api)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", hub.snapshot_download)
    monkeypatch.setattr("zs_llm.loading.hub_offline_reason", lambda: None)  # as if online: the fake answers
    lm = make_lm(method="zerosiam", lr=0.05, predictor_lr=0.05)
    adapt_on_problem(lm, "What is 2+3?")
    assert lm.push_to_hub("me/zs-adapter", private=True) == "https://huggingface.co/me/zs-adapter/commit/0"
    assert ("create_repo", "me/zs-adapter", True) in hub.calls
    pushed = next(c for c in hub.calls if c[0] == "upload_folder")
    assert {"adapter_config.json", "adapter_model.safetensors", "predictor.safetensors",
            "zs_llm_config.json"} <= set(pushed[2])

    again = ZeroSiamLM.from_pretrained("me/zs-adapter", model=tiny_model("llama"), tokenizer=tok, revision="main")
    assert ("snapshot_download", "me/zs-adapter", "main") in hub.calls
    for k, v in lm.state_tensors().items():
        assert torch.equal(again.state_tensors()[k], v), k

    lm.save_pretrained(tmp_path / "local" / "zs-adapter-2", push_to_hub=True, repo_id="me/zs-adapter-2")
    assert (tmp_path / "hub" / "me" / "zs-adapter-2" / "predictor.safetensors").is_file()
    with pytest.raises(FileNotFoundError, match="holds no zs_llm_config.json"):
        ZeroSiamLM.from_pretrained(tmp_path / "no" / "folder", model=tiny_model("llama"), tokenizer=tok)


def test_pooled_streams_export_what_they_export_alone(tmp_path, tiny_dir):
    """Each stream of a pool exports its own adapter (not its neighbours'), equal to the one the
    same stream exports when run alone, and peft loads it."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    outs = {}
    for batch in (1, 2):
        cfg = RunConfig(model=str(tiny_dir), methods=["zerosiam", "tent"], datasets=["arith"], limit=3,
                        stream_batch=batch, adapt={"max_new_tokens": 5, "lr": 0.05, "predictor_lr": 0.05})
        outs[batch] = Runner(cfg, tmp_path / f"b{batch}", progress=False).run() / "adapters"
    tensors = {}
    for batch, adapters in outs.items():
        for name in ("zerosiam__arith", "tent__arith"):
            assert not (adapters / name / "stream1").exists()  # no neighbour's subfolder
            tensors[batch, name] = load_file(adapters / name / "adapter_model.safetensors")
            PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dir), adapters / name)
    for name in ("zerosiam__arith", "tent__arith"):
        alone, pooled = tensors[1, name], tensors[2, name]
        assert alone.keys() == pooled.keys()
        for k in alone:
            assert torch.allclose(alone[k], pooled[k], atol=1e-4), (name, k)
    assert any(not torch.allclose(tensors[2, "zerosiam__arith"][k], tensors[2, "tent__arith"][k])
               for k in tensors[2, "tent__arith"])


# ---------------------------------------------------------------------------- portable, described adapters
def _no_local_path(folder, *paths) -> None:
    for f in ("zs_llm_config.json", "adapter_config.json", "README.md"):
        text = (folder / f).read_text()
        for p in paths:
            assert str(p) not in text, (f, p)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("layout", ["folder", "hub_cache"])
def test_an_adapter_moved_with_its_base_to_another_folder_loads(arch, layout, tmp_path, monkeypatch, tok):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from zs_llm import AdaptConfig
    from zs_llm.loading import load_model

    machine = tmp_path / "one"
    commit = hashlib.sha1(f"{arch}/{layout}".encode()).hexdigest()  # a snapshot folder is named by its commit
    rel = "base" if layout == "folder" else f"hub/models--org--tiny-{arch}/snapshots/{commit}"
    (machine / rel).mkdir(parents=True)
    tiny_model(arch).save_pretrained(machine / rel)
    tok.save_pretrained(machine / rel)
    monkeypatch.chdir(machine)
    model, tokenizer = load_model(rel if layout == "folder" else str(machine / rel))
    lm = ZeroSiamLM(model, tokenizer, AdaptConfig.from_dict({"method": "zerosiam", "lr": 0.05, "max_new_tokens": 4}))
    with torch.no_grad():  # an adapted state: LoRA B and the predictor off their no-op start
        for n, p in lm.hf.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
        lm.predictor.weight.add_(0.01)
        want = lm.hf(IDS).logits.clone()
    lm.save_pretrained("adapter")
    cfg = json.loads((machine / "adapter" / "zs_llm_config.json").read_text())
    peft_cfg = json.loads((machine / "adapter" / "adapter_config.json").read_text())
    hub_id = f"org/tiny-{arch}"
    if layout == "folder":
        assert cfg["base"]["name"] == peft_cfg["base_model_name_or_path"] == "base" and cfg["base"]["hub_id"] is None
    else:
        assert (cfg["base"]["hub_id"], cfg["base"]["revision"]) == (hub_id, commit)
        assert (peft_cfg["base_model_name_or_path"], peft_cfg["revision"]) == (hub_id, commit)
    assert len(cfg["base"]["fingerprint"]) == 16
    _no_local_path(machine / "adapter", machine, tmp_path)

    other = tmp_path / "two"  # another machine: the adapter and the base model's files moved there
    shutil.move(machine, other)
    monkeypatch.chdir(other)
    base_dir = other / rel
    if layout == "folder":
        again = ZeroSiamLM.from_pretrained("adapter")  # the base found by the name it was given
    else:
        base, base_tok = load_model(str(base_dir))  # a hub id loads from the hub: here, the moved cache copy
        again = ZeroSiamLM.from_pretrained(other / "adapter", model=base, tokenizer=base_tok)
    with torch.no_grad():
        assert torch.allclose(again.hf(IDS).logits, want, atol=1e-6)
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), other / "adapter").eval()
    with torch.no_grad():
        assert torch.allclose(peft_model(IDS).logits, want, atol=1e-6)
    got = lora(peft_model.named_parameters())
    for k, v in lora(again.hf.named_parameters()).items():
        assert torch.equal(got[k], v), k
    if layout == "folder":
        monkeypatch.chdir(tmp_path)  # where "base" names nothing: one line naming the base and the fix
        with pytest.raises(FileNotFoundError) as e:
            ZeroSiamLM.from_pretrained(other / "adapter")
        assert "\n" not in str(e.value) and "'base'" in str(e.value) and cfg["base"]["fingerprint"] in str(e.value)
        assert "pass model= and tokenizer=" in str(e.value)


def test_an_exported_adapters_card_states_method_stream_accuracy_and_loading(finished_stream, tiny_dir):
    from eval.rows import scan_rows
    from eval.stats import wilson_interval
    from zs_llm.diagnostics import collapse_measures

    out, _ = finished_stream
    folder = out / "adapters" / "zerosiam__arith"
    card = (folder / "README.md").read_text()
    cfg = json.loads((folder / "zs_llm_config.json").read_text())
    assert "README.md" in cfg["files"]  # checked on load like the weights
    assert card.startswith("---\nlibrary_name: peft\n") and "# zerosiam adapter for " in card
    assert "Model Card for Model ID" not in card  # not peft's empty template
    own = cfg["adapt_config"]["method_args"]
    assert own  # zerosiam's own settings (alpha, divergence, the predictor's) are shown as well
    for k, v in [*cfg["adapt_config"].items(), *own.items()]:  # every setting with its value
        if k != "method_args":
            shown = json.dumps(v) if isinstance(v, (list, dict, bool)) or v is None else v
            name = f"{k} (zerosiam's own)" if k in own else k
            assert f"| {name} | `{shown}` |" in card, k
    assert "| dataset | `arith` |" in card and "| source | generated: generated |" in card
    assert f"| problems seen (adapted on) | {cfg['problems_seen']} |" in card
    rows = sorted(scan_rows(out / "rows" / "zerosiam__arith.jsonl").rows, key=lambda r: r["index"])
    k, n = sum(bool(r["correct"]) for r in rows), len(rows)
    low, high = wilson_interval(k, n)
    assert f"| accuracy | {k}/{n} = {100 * k / n:.1f}% [95% Wilson interval {100 * low:.1f}, {100 * high:.1f}] |" in card
    m = collapse_measures(rows)
    assert f"| verdict | {m['verdict']} ({m['verdict_rule']}) |" in card
    assert f"| fingerprint | `{cfg['base']['fingerprint']}`" in card
    assert 'PeftModel.from_pretrained(base, "path/to/this/folder")' in card
    assert 'ZeroSiamLM.from_pretrained("path/to/this/folder")' in card
    assert f'zs_llm.load_model("{tiny_dir}")' in card  # a local base: loaded by the name it was given
