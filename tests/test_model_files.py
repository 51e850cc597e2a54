"""Damaged model folders and unusable base models are refused in one line naming the file and the
fix, from the library (`load_model`, `zs_llm.load`, `ZeroSiamLM`) and from `eval run` (exit 2):
a checkpoint missing tensors (transformers would fill them randomly), a tensor of the wrong
shape, a truncated or garbled weights file, a folder without config, weights or tokenizer files,
non-finite base weights and a model on the meta device. Generated over the tiny architectures,
random tensors, random truncation points and random wrong shapes."""

import random
import shutil
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

import zs_llm
from eval.cli import main as cli_main
from zs_llm import ZeroSiamLM
from zs_llm.loading import load_model
from zs_llm.testing import ARCHS, MORE_ARCHS, tiny_model

ALL_ARCHS = ARCHS + MORE_ARCHS


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tok):
    """saved(arch) -> an intact tiny model folder of `arch` (written once per module)."""
    root = tmp_path_factory.mktemp("models")
    made = {}

    def get(arch):
        if arch not in made:
            d = root / arch
            tiny_model(arch).save_pretrained(d)
            tok.save_pretrained(d)
            made[arch] = d
        return made[arch]

    return get


def copy_of(src, tmp_path, name="m"):
    d = tmp_path / name
    shutil.copytree(src, d)
    return d


def cli_error(model_dir, tmp_path, capsys) -> str:
    """`eval run` on `model_dir` must exit 2 with one `error:` line (after its progress lines), no
    traceback and no rows."""
    out = tmp_path / "run"
    capsys.readouterr()
    rc = cli_main(["run", "--model", str(model_dir), "--out", str(out), "--limit", "1", "--methods", "noadapt",
                   "--max_new_tokens", "2", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err, err
    assert err[-1].startswith("error: ") and "Traceback" not in "\n".join(err), err
    assert sum(line.startswith("error") for line in err) == 1, err
    assert not list(out.glob("rows/*.jsonl"))
    return err[-1]


def rewrite(d, change):
    """Rewrite d/model.safetensors with `change(state_dict)` applied."""
    sd = load_file(d / "model.safetensors")
    change(sd)
    save_file(sd, d / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_an_intact_folder_loads_with_no_refusal_tied_heads_included(arch, saved):
    """The control: transformers' legitimately skipped tensors (a head tied to the embedding,
    as gpt2 and gemma2 have) are not counted missing."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        model, _ = load_model(str(saved(arch)))
    ref = tiny_model(arch)
    for n, p in ref.state_dict().items():
        assert torch.equal(model.state_dict()[n], p), n


@pytest.mark.parametrize("arch,seed", [(a, s) for s, a in enumerate(ALL_ARCHS)])
def test_a_checkpoint_missing_tensors_is_refused_naming_them(arch, seed, saved, tmp_path, capsys):
    d = copy_of(saved(arch), tmp_path)
    rng = random.Random(seed)
    keys = sorted(load_file(d / "model.safetensors"))
    gone = rng.sample(keys, rng.choice([1, 2, 5]))
    rewrite(d, lambda sd: [sd.pop(k) for k in gone])
    with pytest.raises(ValueError) as e:
        load_model(str(d))
    msg = str(e.value)
    assert str(d) in msg and "tensor(s) the architecture needs" in msg and "re-download" in msg, msg
    # a tied head whose embedding is gone is missing too, so the count can exceed what was removed
    assert int(msg.split("lacks ")[1].split()[0]) >= len(gone)
    assert any(k in msg for k in gone), (gone, msg)
    assert len(msg.splitlines()) == 1
    if seed % 3 == 0:  # the command line and zs_llm.load on a third of them (each loads a model)
        with pytest.raises(ValueError, match="lacks"):
            zs_llm.load(str(d))
        err = cli_error(d, tmp_path, capsys)
        assert "lacks" in err and any(k in err for k in gone), err


@pytest.mark.parametrize("arch,seed", [(a, s) for s, a in enumerate(ALL_ARCHS)])
def test_a_tensor_of_the_wrong_shape_is_refused_naming_both_shapes(arch, seed, saved, tmp_path, capsys):
    d = copy_of(saved(arch), tmp_path)
    rng = random.Random(100 + seed)
    sd = load_file(d / "model.safetensors")
    key = rng.choice(sorted(sd))
    right = tuple(sd[key].shape)
    wrong = right
    while wrong == right or wrong[::-1] == right and len(right) == 2 and right[0] == right[1]:
        wrong = tuple(rng.randint(1, 40) for _ in range(rng.choice([1, 2])))
    rewrite(d, lambda sd: sd.__setitem__(key, torch.zeros(wrong)))
    with pytest.raises(ValueError) as e:
        load_model(str(d))
    msg = str(e.value)
    # transformers names some tensors its own way (gpt_neox's embed_out is its lm_head)
    assert f"tensor {key} " in msg or arch == "gpt_neox", msg
    assert str(wrong) in msg and str(right) in msg and str(d) in msg, msg
    assert "re-download" in msg and len(msg.splitlines()) == 1
    if seed % 3 == 0:
        assert str(wrong) in cli_error(d, tmp_path, capsys)


@pytest.mark.parametrize("seed", range(6))
def test_a_truncated_or_garbled_weights_file_is_refused_naming_it(seed, saved, tmp_path, capsys):
    rng = random.Random(200 + seed)
    d = copy_of(saved(rng.choice(ALL_ARCHS)), tmp_path)
    f = d / "model.safetensors"
    data = f.read_bytes()
    if seed % 2:
        f.write_bytes(data[:rng.randint(1, len(data) - 1)])  # a cut-short download or copy
    else:  # a header length that points past the end
        f.write_bytes(rng.randbytes(8) + data[8:])
    with pytest.raises(ValueError) as e:
        load_model(str(d))
    msg = str(e.value)
    assert f"{f} is damaged" in msg and "re-save or re-download" in msg and len(msg.splitlines()) == 1, msg
    if seed < 2:
        assert f"{f} is damaged" in cli_error(d, tmp_path, capsys)


@pytest.mark.parametrize("seed", range(3))
def test_a_truncated_torch_bin_is_refused_naming_it(seed, tmp_path, tok):
    rng = random.Random(300 + seed)
    d = tmp_path / "m"
    model = tiny_model(rng.choice(ALL_ARCHS))
    model.save_pretrained(d)
    tok.save_pretrained(d)
    (d / "model.safetensors").unlink()
    f = d / "pytorch_model.bin"
    torch.save(model.state_dict(), f)
    load_model(str(d))  # intact, it loads
    data = f.read_bytes()
    f.write_bytes(data[:rng.randint(1, len(data) - 1)])
    with pytest.raises(ValueError, match=f"^{f} is damaged .*re-save or re-download the model$"):
        load_model(str(d))


GROUPS = {"config.json": ["config.json"], "weights": ["model.safetensors"],
          "tokenizer files": ["tokenizer.json", "tokenizer_config.json"]}


@pytest.mark.parametrize("removed", [("config.json",), ("weights",), ("tokenizer files",),
                                     ("config.json", "weights", "tokenizer files"), ("weights", "tokenizer files")])
def test_a_folder_without_model_or_tokenizer_files_names_what_is_missing(removed, saved, tmp_path, capsys):
    d = copy_of(saved("llama"), tmp_path)
    for g in removed:
        for name in GROUPS[g]:
            (d / name).unlink()
    with pytest.raises(FileNotFoundError) as e:
        load_model(str(d))
    msg = str(e.value)
    assert str(d) in msg and all(f"no {g}" in msg for g in removed), msg
    assert all(f"no {g}" not in msg for g in GROUPS if g not in removed), msg
    assert "sentencepiece" not in msg
    err = cli_error(d, tmp_path, capsys)
    assert all(f"no {g}" in err for g in removed), err


@pytest.mark.parametrize("arch,kind", [(a, k) for a in ALL_ARCHS for k in ("nan", "inf")])
def test_non_finite_base_weights_are_named_not_blamed_on_the_architecture(arch, kind, tok):
    model = tiny_model(arch)
    rng = random.Random(f"{arch}{kind}")
    name, p = rng.choice([(n, p) for n, p in model.named_parameters() if "norm" in n or "ln" in n or p.dim() == 2])
    with torch.no_grad():
        p.fill_(float(kind))
    for method in ("zerosiam", "tent", "noadapt"):
        with pytest.raises(ValueError) as e:
            ZeroSiamLM(model, tok, {"method": method})
        msg = str(e.value)
        assert "not finite" in msg and f"(first: {name} " in msg and "logit_postprocess" not in msg, msg
    assert not any("lora" in n for n, _ in model.named_parameters())  # the model comes back as given


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_a_model_on_the_meta_device_is_refused_before_anything_runs(arch, tok):
    with pytest.raises(ValueError, match="meta device .* load real weights first"):
        ZeroSiamLM(tiny_model(arch).to("meta"), tok)


@pytest.mark.parametrize("arch", [a for a in ALL_ARCHS if a != "gemma2"])  # gemma2 soft-caps its logits: finite
def test_finite_weights_whose_logits_overflow_are_named_as_such(arch, tok):
    model = tiny_model(arch)
    with torch.no_grad():
        model.get_output_embeddings().weight.fill_(3e38)  # finite, but no float32 sum of them is
    with pytest.raises(ValueError, match="non-finite logits .* though its weights are finite") as e:
        ZeroSiamLM(model, tok)
    assert "logit_postprocess" not in str(e.value)


def test_non_finite_weights_from_the_command_line_and_zs_llm_load(tmp_path, tok, capsys):
    model = tiny_model("qwen2")
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[3, 5] = float("nan")
    d = tmp_path / "nan_model"
    model.save_pretrained(d)
    tok.save_pretrained(d)
    with pytest.raises(ValueError, match=r"not finite \(first: model.layers.1.mlp.down_proj.weight "):
        zs_llm.load(str(d))
    err = cli_error(d, tmp_path, capsys)
    assert "model.layers.1.mlp.down_proj.weight" in err and "not finite" in err, err
