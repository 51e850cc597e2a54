"""bench/decode_roofline.py: its byte count and kernel floor on hand-checkable models, and a run
end to end on a tiny model (its logic, not its figures)."""

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import decode_roofline as dr  # noqa: E402

from zs_llm.testing import tiny_model  # noqa: E402


def test_step_bytes_counts_each_weight_once_and_no_input_embedding_row_table():
    tied = tiny_model("llama")
    tied.lm_head.weight = tied.get_input_embeddings().weight  # the head is the embedding: read once, by the head
    every = sum(p.numel() * 4 for p in tied.parameters())  # parameters() yields a shared tensor once
    assert dr.step_bytes(tied) == every
    untied = tiny_model("llama")
    assert untied.lm_head.weight is not untied.get_input_embeddings().weight
    embed = untied.get_input_embeddings().weight
    assert dr.step_bytes(untied) == sum(p.numel() * 4 for p in untied.parameters()) - embed.numel() * 4
    # the floor's pass: 7 matrices per layer, then the head
    ws = dr.linears(untied)
    assert len(ws) == 7 * untied.config.num_hidden_layers + 1 and ws[-1] is untied.lm_head.weight


def test_script_prints_every_row_with_equal_tokens():
    out = subprocess.run([sys.executable, "bench/decode_roofline.py", "--tiny", "--threads", "1", "--tokens", "6",
                          "--repeats", "2", "--pools", "3", "--problems", "2", "--stream", "2", "--lookup", "2"],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    assert "fast loop: covers it" in text
    rows = re.findall(r"^\| (\d+) \| (\w[\w (),]*?) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|(.*)\|(.*)\|$", text, re.M)
    assert [(b, p.split()[0]) for b, p, *_ in rows] == [("1", "generate"), ("1", "draft"), ("1", "fast"),
                                                          ("3", "draft"), ("3", "fast")], text
    assert all(r[-1].strip() == "True" for r in rows if r[1] == "fast"), text
    e2e = re.findall(r"^\| (one ZeroSiam stream|main command's pool \(3 streams\)) \| ([\d.]+) \| ([\d.]+) \| .* "
                     r"\| (True|False) \|$", text, re.M)
    assert [r[0] for r in e2e] == ["one ZeroSiam stream", "main command's pool (3 streams)"], text
    assert re.search(r"^\| one ZeroSiam stream, \+ lookup 2 \| [\d.]+ \| [\d.]+ \| .* \| True \|$", text, re.M), text
    assert all(r[3] == "True" and float(r[1]) > 0 and float(r[2]) > 0 for r in e2e), text
    lookup = re.findall(r"^\| 1 \| fast \+ lookup 2 \(([\d.]+) tokens a pass\) \| ([\d.]+) \|.*\| (True|False) \|$", text, re.M)
    assert len(lookup) == 1 and lookup[0][2] == "True" and float(lookup[0][0]) >= 1, text
    stream = re.findall(r"^\| (draft \(generate\)|fast|fast \+ lookup 2 \(the stream's last drafts\)) \| ([\d.]+) "
                        r"\| [\d.]+ \| [\d.]+ \| [\d.]+x / [\d.]+x \| ([\d.]*) \| (True|False|) \|$", text, re.M)
    assert [r[0].split()[0] for r in stream] == ["draft", "fast", "fast"], text
    assert stream[1][2:] == ("1.00", "True"), text
    # the tiny model's drafts repeat themselves and each other: more than one token a pass, the same drafts
    assert float(stream[2][2]) > 1 and stream[2][3] == "True", text
