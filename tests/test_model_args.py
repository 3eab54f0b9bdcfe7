"""model_args: a misspelt name stops before the model loads, naming the closest known one; names meant
for the HF model still pass through."""

from __future__ import annotations

import pytest

from bizsre_tasks.errors import ConfigurationError


@pytest.fixture
def no_model_load(monkeypatch):
    """Any attempt to load weights fails the test: the check must come first."""
    from lm_eval.models.huggingface import HFLM

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(HFLM, "__init__", refuse)


@pytest.mark.parametrize(
    ("name", "closest"),
    [("edit_lnag", "edit_lang"), ("methd", "method"), ("protocl", "protocol"), ("edit_btach", "edit_batch"),
     ("attn_implementaton", "attn_implementation"), ("trust_remote_cod", "trust_remote_code")],
)
def test_misspelt_model_arg_is_named_with_the_closest_known_one(tiny_gpt2, no_model_load, name, closest):
    from bizsre_tasks.editing_wrapper import EditedHFLM

    with pytest.raises(ConfigurationError) as info:
        EditedHFLM(pretrained=str(tiny_gpt2), method="rome", **{name: "zh"})
    assert str(info.value).startswith(f"unknown model_arg '{name}' (did you mean '{closest}'?)")


def test_unrelated_unknown_name_lists_our_arguments(tiny_gpt2, no_model_load):
    from bizsre_tasks.editing_wrapper import EditedHFLM

    with pytest.raises(ConfigurationError, match=r"unknown model_arg 'zzzz' \(edited-hf's own are: .*edit_lang.*\)"):
        EditedHFLM(pretrained=str(tiny_gpt2), zzzz=1)


def test_hf_model_arguments_pass_through(tiny_gpt2):
    """attn_implementation (from_pretrained), trust_remote_code (HFLM) and a config attribute
    (resid_pdrop, which from_pretrained sets on the config) reach the model."""
    from bizsre_tasks.editing_wrapper import EditedHFLM

    lm = EditedHFLM(pretrained=str(tiny_gpt2), device="cpu", attn_implementation="eager", trust_remote_code=False, resid_pdrop=0.25)
    assert lm.model.config._attn_implementation == "eager"
    assert lm.model.config.resid_pdrop == 0.25


def test_plain_lm_eval_reports_a_misspelt_argument_in_one_line(tiny_gpt2, tmp_path):
    import os
    import subprocess
    import sys

    code = (
        "import sys; from bizsre_tasks.wrapper import lm_eval_hook; lm_eval_hook.install(); "
        "from lm_eval.__main__ import cli_evaluate; "
        f"sys.argv = ['lm_eval', '--model', 'edited-hf', '--model_args', 'pretrained={tiny_gpt2},method=rome,edit_lnag=zh', "
        "'--tasks', 'bizsre']; cli_evaluate()"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("lm_eval: error: unknown model_arg 'edit_lnag' (did you mean 'edit_lang'?)")
    assert "Loading weights" not in result.stderr
