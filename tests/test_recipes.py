import json
import subprocess
import sys
from pathlib import Path

import pytest

from eval.report import load_run
from recipes._common import resolve, split
from zs_llm.config import AdaptConfig

REPO = Path(__file__).resolve().parents[1]
ACCELERATE = str(Path(sys.executable).parent / "accelerate")
KEYS = ("id", "index", "method", "dataset", "prompt", "response", "extracted", "gold", "correct", "config_hash")



def rows(out):
    return {k: [{f: r[f] for f in KEYS} for r in v] for k, v in load_run(out).items()}


def launch(prefix, tiny_dir, out):
    template = out.parent / "prompt.txt"  # the recipe's Meta prompt comes from the hub or a file: a made-up one
    template.write_text("<|start_header_id|>user<|end_header_id|>\n\nMade-up rules.\n\nProblem: {question}<|eot_id|>\n")
    cmd = prefix + [str(REPO / "recipes" / "llama31_8b_math.py"), "--model", str(tiny_dir), "--limit", "3",
                    "--methods", "noadapt,tent,zerosiam", "--datasets", "arith,gsm8k", "--dtype", "float32", "--max_new_tokens", "5", "--out", str(out),
                    "--prompt_template", str(template)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def test_accelerate_cpu_with_several_processes_is_refused_naming_torchrun(tiny_dir, tmp_path):
    """accelerate's --cpu starts one process whatever --num_processes says: refused, not run alone."""
    cmd = [ACCELERATE, "launch", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--cpu",
           "--num_processes", "2", str(REPO / "recipes" / "llama31_8b_math.py"), "--model", str(tiny_dir), "--limit",
           "1", "--out", str(tmp_path / "run")]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0, proc.stderr[-2000:]  # the recipe exits 2; accelerate reports that as its own failure
    err = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "torchrun --nproc_per_node N recipes/llama31_8b_math.py" in err[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("launcher", [
    ["--multi_gpu", "--num_processes", "2"],  # two real processes (torchrun underneath), on CPUs here
])
def test_accelerate_launch_matches_single_process(launcher, tiny_dir, tmp_path):
    single = tmp_path / "single"
    launch([sys.executable], tiny_dir, single)
    multi = tmp_path / "multi"
    proc = launch([ACCELERATE, "launch", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
                  + launcher, tiny_dir, multi)
    if "--multi_gpu" in launcher:
        assert "rank 1 of 2" in proc.stdout + proc.stderr
    assert not list((multi / "rows").glob("*shard*"))  # merged
    a, b = rows(single), rows(multi)
    assert set(a) == {(m, d) for m in ("noadapt", "tent", "zerosiam") for d in ("arith", "gsm8k")}
    assert a == b
    assert (multi / "report.md").exists()
    assert "Made-up rules.\n\nProblem: " in a[("noadapt", "arith")][0]["prompt"]
    assert json.loads((multi / "run.json").read_text())["prompt"]["style"] == "meta_llama31_math"


def test_yaml_and_overrides_resolve(tmp_path):
    y = tmp_path / "r.yaml"
    y.write_text("model: m\nmethods: [noadapt, zerosiam]\ndatasets: [arith]\nlr: 1.0e-4\nout: runs/x\n")
    cfg = resolve(y, ["--lr", "3e-4", "--methods", "tent", "--limit=7", "--guard", "false",
                      "--lora_target_modules", "q_proj,v_proj", "--overwrite"])
    assert cfg["lr"] == 3e-4 and cfg["methods"] == ["tent"] and cfg["limit"] == 7 and cfg["guard"] is False
    assert cfg["lora_target_modules"] == ["q_proj", "v_proj"] and cfg["overwrite"] is True
    run, out, overwrite = split(cfg)
    assert run.adapt["lr"] == 3e-4 and run.methods == ["tent"] and out == "runs/x" and overwrite


def test_unknown_fields_list_the_valid_ones(tmp_path):
    y = tmp_path / "r.yaml"
    y.write_text("model: m\nout: x\n")
    with pytest.raises(ValueError, match="valid fields: .*alpha.*lr"):
        resolve(y, ["--learning_rate", "1"])
    y.write_text("model: m\nlearnig_rate: 1\n")
    with pytest.raises(ValueError, match="unknown field.*learnig_rate.*valid fields"):
        resolve(y, [])


def test_shipped_recipe_configs_resolve():
    for name in ("llama31_8b_math", "smollm2_135m_math"):
        run, out, _ = split(resolve(REPO / "recipes" / "configs" / f"{name}.yaml", []))
        assert run.methods and out
    run, _, _ = split(resolve(REPO / "recipes" / "configs" / "llama31_8b_math.yaml", []))
    assert run.model == "meta-llama/Llama-3.1-8B-Instruct" and run.dtype == "bfloat16"
    assert run.datasets == ["math500", "college_math", "aime24", "minerva_math"]
    # every method of the harness under the paper protocol, and the guarded two as rows of their own
    assert run.methods == ["noadapt", "tent", "come", "sar", "eata", "deyo", "slot", "eminf", "zerosiam", "zerosiam+sar",
                           "zerosiam+eata", "zerosiam+deyo", "tent+guard", "zerosiam+guard"]
    from zs_llm.methods import METHODS

    assert set(METHODS) <= set(run.methods)
    configs = {spec: AdaptConfig.from_spec(spec, run.adapt) for spec in run.methods}
    assert {spec: c.label() for spec, c in configs.items()} == {spec: spec for spec in run.methods}
    assert all(c.grad_clip is None and c.lr is None and c.guard is spec.endswith("+guard")
               for spec, c in configs.items())
