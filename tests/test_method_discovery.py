"""A method is one file: dropped into zs_llm/methods/, given with --method_module, or installed
under the entry point group `zs_llm.methods`, it runs with no other edit; a method setting named
like a shared field is refused when the method registers."""

import dataclasses
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from eval.cli import main as cli_main
from eval.rows import read_rows, stream_path
from zs_llm.methods import METHODS, Method, MethodConfig, MethodRegistrationError, load_entry_points
from zs_llm.settings import setting

REPO = Path(__file__).resolve().parents[1]


def method_file(name: str, setting_name: str = "weight") -> str:
    """A whole method in one file: `weight` x the entropy of each token, on LoRA."""
    return textwrap.dedent(f'''
        from dataclasses import dataclass

        from zs_llm.methods import METHODS, Method, MethodConfig
        from zs_llm.objective import entropy
        from zs_llm.settings import setting


        @dataclass
        class Config(MethodConfig):
            {setting_name}: float = setting(0.5, "Multiplier of the entropy.", min=0.0)


        @METHODS.register("{name}")
        class Scaled(Method):
            name = "{name}"
            trains = ("lora",)
            config_class = Config
            default_lr = 5e-2

            def token_loss(self, online_logits, target_logp, labels, target_p=None):
                return getattr(self.cfg, "{setting_name}") * entropy(online_logits), None, {{}}
        ''')


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "eval", "run", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def tiny_run(tiny_dir, out, methods: str) -> list[str]:
    return ["--model", str(tiny_dir), "--methods", methods, "--datasets", "arith", "--limit", "2", "--out", str(out),
            "--set", "max_new_tokens=4", "--no_progress", "--no_report"]


def test_a_file_dropped_into_a_copy_of_the_package_runs_from_the_command_line(tiny_dir, tmp_path):
    copy = tmp_path / "copy"
    for package in ("zs_llm", "eval"):
        shutil.copytree(REPO / package, copy / package, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "zs_llm" / "methods" / "half_entropy.py").write_text(method_file("half_entropy"))
    out = tmp_path / "run"
    proc = run_cli(tiny_run(tiny_dir, out, "noadapt,half_entropy:weight=2"), copy)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = read_rows(stream_path(out, "half_entropy:weight=2", "arith"))
    assert len(rows) == 2 and rows[0]["config"]["method_args"] == {"weight": 2.0}
    assert all(r["steps"][0]["grad_norm"] > 0 for r in rows)  # it adapted

    # a setting named like a shared field is refused when the file registers, in one line
    (copy / "zs_llm" / "methods" / "shadowing.py").write_text(method_file("shadowing", "steps"))
    proc = run_cli(tiny_run(tiny_dir, tmp_path / "run2", "shadowing"), copy)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "'shadowing'" in proc.stderr and "['steps']" in proc.stderr and "rename" in proc.stderr


def test_method_module_runs_a_file_outside_the_package(tiny_dir, tmp_path):
    outside = tmp_path / "elsewhere" / "my_method.py"
    outside.parent.mkdir()
    outside.write_text(method_file("outside_entropy"))
    out = tmp_path / "run"
    proc = run_cli(["--method_module", str(outside), *tiny_run(tiny_dir, out, "outside_entropy:weight=3")], REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = read_rows(stream_path(out, "outside_entropy:weight=3", "arith"))
    assert len(rows) == 2 and rows[0]["config"]["method_args"] == {"weight": 3.0}
    assert rows[0]["steps"][0]["grad_norm"] > 0


@pytest.mark.parametrize(("content", "source", "message"), [
    (None, "missing.py", "no such file"),
    (None, "no_such_package_xyz.methods", "no such module"),
    ("x = 1\n", "nothing.py", "registered no method"),
    ("raise RuntimeError('boom')\n", "broken.py", "failed to import (RuntimeError: boom)"),
    (method_file("shadow_lr", "lr"), "shadow.py", "['lr'] are named like shared AdaptConfig field"),
    (method_file("tent"), "again.py", "'tent' is already registered"),
])
def test_method_module_errors_are_one_line(content, source, message, tmp_path, capsys):
    path = tmp_path / source
    if content is not None:
        path.write_text(content)
    arg = str(path) if source.endswith(".py") else source
    before = dict(METHODS)
    assert cli_main(["run", "--method_module", arg, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.strip().count("\n") == 0, err
    assert dict(METHODS) == before  # nothing half-registered


def test_method_module_without_a_value_is_one_line():
    from eval.options import parse_options

    with pytest.raises(ValueError, match=r"^--method_module needs a .py file or a module name \(.*expected one"):
        parse_options(["--method_module"])


def test_registration_refuses_a_setting_named_like_a_shared_field():
    for shared in ("steps", "lr", "temperature", "method_args"):
        config = dataclasses.make_dataclass("C", [(shared, float, setting(1.0, "x"))], bases=(MethodConfig,))
        cls = type("M", (Method,), {"config_class": config})
        with pytest.raises(MethodRegistrationError, match=rf"\['{shared}'\] are named like shared"):
            METHODS.register("shadow_test")(cls)
        assert "shadow_test" not in METHODS
    with pytest.raises(MethodRegistrationError, match="config_class must be a dataclass"):
        METHODS.register("shadow_test")(type("M", (Method,), {"config_class": dict}))
    with pytest.raises(KeyError, match="--method_module"):
        METHODS["no_such_method"]


def test_entry_point_methods_load_when_zs_llm_is_imported(tmp_path):
    site = tmp_path / "site"
    (site / "plugin_methods_xyz").mkdir(parents=True)
    (site / "plugin_methods_xyz" / "__init__.py").write_text(method_file("plugin_entropy"))
    dist = site / "plugin_methods_xyz-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: plugin-methods-xyz\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[zs_llm.methods]\nplugin_entropy = plugin_methods_xyz\n")
    code = "import zs_llm; print(sorted(zs_llm.METHODS)); print(zs_llm.AdaptConfig.from_spec('plugin_entropy:weight=4').method_config.weight)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "'plugin_entropy'" in proc.stdout and proc.stdout.strip().endswith("4.0")


def test_a_broken_entry_point_names_itself_and_its_package(monkeypatch):
    import importlib.metadata

    ep = importlib.metadata.EntryPoint("bad", "no_such_module_xyz", "zs_llm.methods")
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [ep] if group == "zs_llm.methods" else [])
    with pytest.raises(ImportError, match=r"method entry point bad = no_such_module_xyz \(group zs_llm.methods"):
        load_entry_points()
