"""The adapted state leaves the harness and the library as folders others load: each finished
online stream is exported to <run>/adapters/<stream>/, which ZeroSiamLM.from_pretrained and
peft.PeftModel.from_pretrained both load; ZeroSiamLM pushes to and loads from the Hub (faked here:
tests never download)."""

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
