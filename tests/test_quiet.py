"""Quiet runs: --no_progress silences every progress bar (ours and the libraries' loading bars) and
puts the libraries' switches back afterwards; our own calls raise no deprecation warning."""

import warnings

import pytest

from eval.cli import main as cli_main

BAR = "it/s]"  # what every tqdm bar prints as it updates


@pytest.mark.parametrize("progress", [False, True])
def test_no_progress_silences_every_bar(progress, tiny_dir, tmp_path, capfd, monkeypatch):
    import transformers.utils.logging as tf_logging

    monkeypatch.setenv("ZS_LLM_CACHE", str(tmp_path / "cache"))
    capfd.readouterr()
    argv = ["run", "--model", str(tiny_dir), "--methods", "noadapt,zerosiam", "--datasets", "arith", "--limit", "2",
            "--max_new_tokens", "2", "--out", str(tmp_path / "run")] + ([] if progress else ["--no_progress"])
    assert cli_main(argv) == 0
    err = capfd.readouterr().err
    if progress:  # the test can fail: with bars on, transformers' loading bar and ours both show
        assert "Loading weights" in err and "zerosiam | arith" in err and BAR in err
    else:
        assert BAR not in err and "%|" not in err, err
    assert tf_logging.is_progress_bar_enabled()  # put back for whatever the process does next


def test_progress_bars_off_covers_the_gguf_conversion_bar_and_is_undone():
    import huggingface_hub.utils as hub
    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from tqdm.auto import tqdm

    from zs_llm.loading import progress_bars

    with progress_bars(False):
        assert list(gguf_utils.tqdm(range(3), desc="x")) == [0, 1, 2]
        assert gguf_utils.tqdm(range(1)).disable and hub.are_progress_bars_disabled()
    assert gguf_utils.tqdm is tqdm and not hub.are_progress_bars_disabled()


def test_activation_checkpointing_on_and_off_warns_nothing(make_lm):
    lm = make_lm("llama", gradient_checkpointing=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning from our calls, whoever raises it
        lm.set_gradient_checkpointing(False)
        lm.set_gradient_checkpointing(True)
