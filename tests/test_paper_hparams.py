"""`hparams=paper`: the bundled presets resolve for every method and pass the strict checks, layer
choices follow relative depth, and every switch the presets turn on changes what the method does."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from bizsre_tasks.editing.base import EditingContext, EditRequest
from bizsre_tasks.editing.common import build_batch, encode_prompt, logits_at
from bizsre_tasks.editing.demonstrations import DemonstrationPool
from bizsre_tasks.editing.kv import value_delta
from bizsre_tasks.editing.layout import ModelLayout
from bizsre_tasks.editing.registry import (
    METHODS,
    build_method,
    hparams_source,
    method_class,
    read_hparams_file,
    resolve_hparams,
    scale_layers,
)
from bizsre_tasks.editing.rome import prefix_seeds
from bizsre_tasks.editing.tensors.head_softmax import HeadObjective
from bizsre_tasks.errors import ConfigurationError
from tests.tiny_models import flat_train_file
from tests.test_ike import make_method as make_ike
from tests.test_ike import request as ike_request

TINY_REQUEST = EditRequest(prompt="Who made Volvo B12M", target="of", subject="Volvo B12M", lang="en")
# Quick ROME settings for a 4-layer random model (the switches under test are added per test).
QUICK = {"layer": 1, "steps": 4, "n_prefixes": 2, "prefix_length": 3, "weight_decay": 0.0}


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BIZSRE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("BIZSRE_TRAIN_FILE", raising=False)


def _context(folder, sharpen: bool = True) -> EditingContext:
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    model.requires_grad_(False)
    if sharpen:  # random tiny logits barely depend on the hidden state; give the edit something to move
        with torch.no_grad():
            model.get_output_embeddings().weight.mul_(10)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    return EditingContext(model=model, tokenizer=tokenizer, layout=ModelLayout.for_model(model), device=torch.device("cpu"),
                          model_name=str(folder))


def _spy_deltas(method) -> list:
    """Record every (rows, DeltaResult) the method's edit uses."""
    seen = []
    original = method._delta

    def spy(request):
        out = original(request)
        seen.append(out)
        return out

    method._delta = spy
    return seen


# --- presets and the registry -----------------------------------------------------------------
@pytest.mark.parametrize("method", sorted(METHODS))
def test_paper_preset_resolves_and_passes_strict_checks(method, tiny_gemma):
    user = read_hparams_file("paper", method)
    assert hparams_source("paper", method).name == f"{method}.yaml"
    ctx = _context(tiny_gemma, sharpen=False)
    resolved = resolve_hparams(method_class(method), ctx.layout.model_type, scale_layers(user, ctx.layout.num_layers), "paper")
    for key, value in user.items():
        if key not in ("reference_depth", "layer", "layers"):
            assert resolved[key] == value, key
    if method not in ("serac", "mend"):  # those need a trained checkpoint to be built
        build_method(method, ctx, user, source="paper")


def test_paper_preset_values_reach_the_methods(tiny_gemma):
    ctx = _context(tiny_gemma, sharpen=False)  # 4 layers: the seed's 32-layer choices scaled down
    rome = build_method("rome", ctx, read_hparams_file("paper", "rome"))
    assert rome.edit_layers() == [0] and rome.hparams["mom2_adjustment"] is False and rome.hparams["update_key"] == "prompt"
    assert rome.hparams["prefix_groups"] == [[5, 10], [10, 10]] and rome.hparams["total_loss_stop"] == 0.05
    memit = build_method("memit", ctx, read_hparams_file("paper", "memit"))
    assert memit.edit_layers() == [0, 1] and memit.hparams["mom2_weight"] == 15000.0
    ft = build_method("ft", ctx, read_hparams_file("paper", "ft"))
    assert ft.edit_layers == [2] and ft.hparams["norm_constraint"] == 0.0 and ft.hparams["loss_position"] == "last_prompt"
    kn = build_method("kn", ctx, read_hparams_file("paper", "kn"))
    assert kn.kn_layers == [0, 1, 2, 3]
    ike = build_method("ike", ctx, read_hparams_file("paper", "ike"))
    assert ike.hparams["k"] == 32 and ike.hparams["most_similar_first"] and ike.hparams["edit_demo"]


def test_preset_needs_a_method_and_a_file():
    with pytest.raises(ConfigurationError, match="needs the method"):
        read_hparams_file("paper")
    with pytest.raises(ConfigurationError, match="no preset for method 'my.module:Thing'"):
        read_hparams_file("paper", "my.module:Thing")


def test_layers_scale_by_relative_depth():
    assert scale_layers({"reference_depth": 32, "layer": 5}, 18)["layer"] == 3
    assert scale_layers({"reference_depth": 32, "layers": [4, 5, 6, 7, 8]}, 18)["layers"] == [2, 3, 4]
    assert scale_layers({"reference_depth": 32, "layers": [21]}, 18)["layers"] == [12]
    assert scale_layers({"reference_depth": 32, "layers": [0, 31]}, 18)["layers"] == [0, 17]
    assert scale_layers({"reference_depth": 32, "layers": [29, 30, 31]}, 32)["layers"] == [29, 30, 31]
    assert scale_layers({"layer": 5}, 18) == {"layer": 5}  # no reference_depth: as written
    for bad in ({"reference_depth": 32, "layer": 32}, {"reference_depth": 0, "layer": 1}, {"reference_depth": 32, "layers": ["x"]}):
        with pytest.raises(ConfigurationError):
            scale_layers(bad, 18)


# --- ROME / MEMIT switches ----------------------------------------------------------------------
def _rome_update(model, hparams):
    """Apply ROME with `hparams` to the tiny model: the weight update, the spied δ rows and result, the edit."""
    ctx = _context(model)
    method = build_method("rome", ctx, hparams)
    seen = _spy_deltas(method)
    weight = ctx.layout.weight_out_in("mlp_out", 1)
    before = weight.detach().clone()
    edit = method.apply(TINY_REQUEST)
    rows, result = seen[0]
    return (weight.detach() - before).double(), rows, result, edit


def test_without_mom2_adjustment_no_statistics_and_update_is_delta_mean_key_over_prompt_key(tiny_gemma, tmp_path, caplog):
    update, rows, result, edit = _rome_update(tiny_gemma, {**QUICK, "mom2_adjustment": False, "update_key": "prompt"})
    mean_key = result.keys[: rows.n_rewrite].double().mean(0)
    prompt_key = result.keys[0].double()
    expected = torch.outer(result.delta.double(), mean_key) / float(mean_key @ prompt_key)
    torch.testing.assert_close(update, expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(update @ prompt_key, result.delta.double(), rtol=1e-4, atol=1e-6)  # the bare prompt maps to v*
    assert not (tmp_path / "cache" / "stats").exists() and "key statistics" not in caplog.text
    edit.restore()


def test_default_update_uses_statistics_and_the_mean_key(tiny_gemma, tmp_path):
    """The counterpart: by default C⁻¹ enters (statistics are computed) and the mean key maps to v*."""
    update, rows, result, edit = _rome_update(tiny_gemma, QUICK)
    mean_key = result.keys[: rows.n_rewrite].double().mean(0)
    torch.testing.assert_close(update @ mean_key, result.delta.double(), rtol=1e-4, atol=1e-6)
    assert not torch.allclose(update @ result.keys[0].double(), result.delta.double(), rtol=1e-3, atol=1e-5)
    assert any((tmp_path / "cache" / "stats").rglob("*.pt"))
    edit.restore()


def test_prefix_groups_give_prefixes_of_each_length(tiny_gemma):
    ctx = _context(tiny_gemma)
    method = build_method("rome", ctx, {**QUICK, "prefix_groups": [[3, 2], [7, 3]]})
    calls = []  # one forward per generated token; its input is the prefix so far
    handle = ctx.model.base_model.register_forward_hook(lambda module, args, kwargs, out: calls.append(kwargs["input_ids"].shape[1]),
                                                        with_kwargs=True)
    try:
        prefixes = method.prefixes("en")
    finally:
        handle.remove()
    assert len(prefixes) == 5
    starts = [len(encode_prompt(ctx.tokenizer, word)) for word in prefix_seeds("en")[0][:5]]
    totals = [3, 3, 7, 7, 7]  # tokens per prefix, the start word (and BOS) included
    assert len(calls) == sum(max(0, total - start) for total, start in zip(totals, starts)) > 0
    assert max(calls) == 7 - 1
    assert len(method._rows(TINY_REQUEST).rows) == 1 + 5 + 1  # bare prompt, 5 prefixed, KL row


def test_kl_at_the_subject_token(tiny_gemma):
    ctx = _context(tiny_gemma)
    last = build_method("rome", ctx, QUICK)._rows(TINY_REQUEST)
    subject = build_method("rome", ctx, {**QUICK, "kl_position": "subject"})._rows(TINY_REQUEST)
    assert last.kl_end == len(last.rows[-1]) - 1
    assert subject.kl_end == subject.subjects[-1] < last.kl_end


def test_absolute_lr_moves_delta_by_lr_per_coordinate(tiny_gemma):
    """Adam's first step moves every coordinate by about lr: on δ itself (relative_lr false), or on θ = δ/RMS(v)."""
    ctx = _context(tiny_gemma)
    settings = {**QUICK, "steps": 1, "lr": 0.5, "kl_factor": 0.0, "nll_stop": 0.0, "clamp_norm_factor": 1e6}
    absolute = build_method("rome", ctx, {**settings, "relative_lr": False})
    relative = build_method("rome", ctx, settings)
    delta_abs = absolute._delta(TINY_REQUEST)[1]
    delta_rel = relative._delta(TINY_REQUEST)[1]
    assert delta_abs.delta.abs().max() == pytest.approx(0.5, rel=1e-3)
    rms = float(delta_rel.values[0].norm()) / delta_rel.values.shape[1] ** 0.5
    assert delta_rel.delta.abs().max() == pytest.approx(0.5 * rms, rel=1e-3)


def test_weight_decay_forms():
    state = value_delta._CaseState(torch.full((4,), 1.0), lr=0.1, relative_lr=False)  # |v| = 2
    with torch.no_grad():
        state.theta.fill_(3.0)  # |δ| = 6
    assert float(state.decay("ratio_squared")) == pytest.approx((6 / 2) ** 2)
    assert float(state.decay("norm_over_value_squared")) == pytest.approx(6 / 4)


def test_weight_decay_form_changes_the_delta(tiny_gemma):
    ctx = _context(tiny_gemma)
    settings = {**QUICK, "steps": 3, "nll_stop": 0.0, "weight_decay": 50.0, "relative_lr": False, "lr": 0.5}
    squared = build_method("rome", ctx, settings)._delta(TINY_REQUEST)[1].delta
    seed_form = build_method("rome", ctx, {**settings, "weight_decay_form": "norm_over_value_squared"})._delta(TINY_REQUEST)[1].delta
    assert not torch.allclose(squared, seed_form)


def test_total_loss_stop(tiny_gemma):
    ctx = _context(tiny_gemma)
    settings = {**QUICK, "nll_stop": 0.0}
    assert build_method("rome", ctx, {**settings, "total_loss_stop": 1e9})._delta(TINY_REQUEST)[1].steps == 0
    assert build_method("rome", ctx, settings)._delta(TINY_REQUEST)[1].steps == QUICK["steps"]


def test_reverse_kl_is_kl_of_the_edited_from_the_original(tiny_gemma):
    ctx = _context(tiny_gemma)
    torch.manual_seed(0)
    hidden0 = torch.randn(2, ctx.model.config.hidden_size)
    hidden1 = hidden0 + 0.5 * torch.randn_like(hidden0)
    target = torch.randn(1, ctx.model.config.hidden_size)
    ids = torch.tensor([5])
    logp0 = torch.log_softmax(ctx.model.get_output_embeddings()(hidden0).float(), -1)
    logp1 = torch.log_softmax(ctx.model.get_output_embeddings()(hidden1).float(), -1)
    forward, reverse = HeadObjective(ctx.model), HeadObjective(ctx.model, reverse_kl=True)
    for objective in (forward, reverse):
        objective(target, ids, hidden0)
    _, kl_forward = forward(target, ids, hidden1)
    _, kl_reverse = reverse(target, ids, hidden1)
    torch.testing.assert_close(kl_reverse, (logp1.exp() * (logp1 - logp0)).sum(-1), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(kl_forward, (logp0.exp() * (logp0 - logp1)).sum(-1), rtol=1e-4, atol=1e-6)
    assert not torch.allclose(kl_forward, kl_reverse)


def test_kl_direction_reaches_the_objective(tiny_gemma, monkeypatch):
    ctx = _context(tiny_gemma)
    made = []
    original = value_delta.HeadObjective

    def spy(model, reverse_kl=False):
        made.append(reverse_kl)
        return original(model, reverse_kl=reverse_kl)

    monkeypatch.setattr(value_delta, "HeadObjective", spy)
    build_method("rome", ctx, {**QUICK, "steps": 1})._delta(TINY_REQUEST)
    build_method("rome", ctx, {**QUICK, "steps": 1, "kl_direction": "edited_original"})._delta(TINY_REQUEST)
    assert made == [False, True]


@pytest.mark.parametrize(
    "hparams",
    [{"kl_position": "middle"}, {"kl_direction": "both"}, {"update_key": "first"}, {"weight_decay_form": "l1"},
     {"prefix_groups": [[5]]}, {"prefix_groups": [[5, -1]]}, {"total_loss_stop": -1.0}, {"relative_lr": "no"}],
)
def test_bad_switch_values_are_configuration_errors(tiny_gemma, hparams):
    with pytest.raises(ConfigurationError):
        build_method("rome", _context(tiny_gemma, sharpen=False), {**QUICK, **hparams})


def test_memit_with_the_seed_switches_edits_and_restores(tiny_gemma):
    ctx = _context(tiny_gemma)
    user = {key: value for key, value in read_hparams_file("paper", "memit").items() if key != "prefix_groups"}
    method = build_method("memit", ctx, {**user, "prefix_groups": [[4, 2]], "steps": 6})
    snapshot = {name: t.detach().clone() for name, t in ctx.model.state_dict().items()}
    edit = method.apply(TINY_REQUEST)
    assert any(not torch.equal(t, snapshot[n]) for n, t in ctx.model.state_dict().items())
    edit.restore()
    assert all(torch.equal(t, snapshot[n]) for n, t in ctx.model.state_dict().items())


# --- FT switches ------------------------------------------------------------------------------
FT_REQUEST = EditRequest(prompt="Question: When was the IAAF Combined Events Challenge founded?\nAnswer:", target="2006 edition",
                         subject="IAAF Combined Events Challenge", lang="en")


def _ft_losses(ctx) -> tuple[float, float]:
    """(teacher-forced NLL, every target token at the prompt's last position) on the unedited model."""
    batch = build_batch(ctx.tokenizer, [FT_REQUEST.prompt], [FT_REQUEST.target_text])
    with torch.no_grad():
        tf = torch.log_softmax(logits_at(ctx.model, batch.input_ids, batch.attention_mask, batch.positions), -1)
        last = torch.log_softmax(logits_at(ctx.model, batch.input_ids, batch.attention_mask, batch.positions[:, :1]), -1)
    ids = batch.target_ids[0]
    assert len(ids) >= 2
    return float(-tf[0, torch.arange(len(ids)), ids].mean()), float(-last[0, 0, ids].mean())


def test_ft_loss_position_last_prompt_scores_the_bag_of_tokens(tiny_gemma):
    """early_stop_nll between the two objectives: only the objective in use decides whether FT steps."""
    ctx = _context(tiny_gemma)
    teacher_forced, last_prompt = _ft_losses(ctx)
    assert abs(teacher_forced - last_prompt) > 1e-3
    threshold = (teacher_forced + last_prompt) / 2
    weight = ctx.layout.weight_out_in("mlp_out", 1)
    changed = {}
    for position in ("teacher_forced", "last_prompt"):
        before = weight.detach().clone()
        method = build_method("ft", ctx, {"layers": [1], "steps": 3, "lr": 0.01, "early_stop_nll": threshold, "loss_position": position})
        edit = method.apply(FT_REQUEST)
        changed[position] = not torch.equal(weight, before)
        edit.restore()
    # The objective above the threshold takes steps; the one below stops at once.
    assert changed == {"teacher_forced": teacher_forced > threshold, "last_prompt": last_prompt > threshold}


def test_ft_norm_constraint_zero_is_no_bound(tiny_gemma):
    ctx = _context(tiny_gemma)
    weight = ctx.layout.weight_out_in("mlp_out", 1)
    before = weight.detach().clone()
    method = build_method("ft", ctx, {"layers": [1], "steps": 5, "lr": 0.05, "early_stop_nll": 0.0, "norm_constraint": 0.0})
    edit = method.apply(FT_REQUEST)
    assert float((weight - before).abs().max()) > 0.05  # beyond any default bound (2.5e-4 .. 5e-4)
    edit.restore()
    assert torch.equal(weight, before)


def test_ft_bad_loss_position(tiny_gemma):
    with pytest.raises(ConfigurationError, match="loss_position"):
        build_method("ft", _context(tiny_gemma, sharpen=False), {"layers": [1], "loss_position": "first"})


# --- IKE switches -----------------------------------------------------------------------------
def test_pool_select_most_similar_first():
    from bizsre_tasks.tasks.data_loading import TrainRecord

    records = [TrainRecord(src=f"q{i}?", alt=f"a{i}") for i in range(4)]
    pool = DemonstrationPool(records, "en", "mem", "fp")
    pool.embeddings = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.8, 0.2], [0.0, 1.0], [0.5, 0.5]]), dim=-1)
    demos = pool.select(torch.tensor([1.0, 0.0]), 3, (1.0, 0.0, 0.0), most_similar_first=True)
    assert [d.fact_question for d in demos] == ["q0?", "q1?", "q3?"]


def test_ike_seed_prompt_orders_and_includes_the_edit(tiny_gemma, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(str(tiny_gemma)).eval().requires_grad_(False)
    tiny = (model, AutoTokenizer.from_pretrained(str(tiny_gemma)))
    train = flat_train_file(tmp_path, 8)
    edit = ike_request()
    plain = make_ike(tiny, train, k=3, ratio=[1.0, 0.0, 0.0]).apply(edit).context_text
    seed = make_ike(tiny, train, k=3, ratio=[1.0, 0.0, 0.0], most_similar_first=True, edit_demo=True).apply(edit).context_text
    fact = f"New Fact: {edit.question} {edit.target}"
    assert plain.count(fact) == 1 and seed.count(fact) == 2  # the edit's own demonstration, then its fact line
    plain_facts = [line for line in plain.splitlines() if line.startswith("New Fact: ")][:-1]
    seed_facts = [line for line in seed.splitlines() if line.startswith("New Fact: ")][:-2]
    assert seed_facts == list(reversed(plain_facts))  # the same demonstrations, most similar first


# --- key statistics without a corpus file: texts the model generates ------------------------------
def test_without_a_corpus_the_model_writes_one_in_the_edit_language_once(tiny_gemma, tmp_path, caplog, monkeypatch):
    from bizsre_tasks.editing.kv import generated_corpus

    small = {**QUICK, "stats_fallback": "generated", "stats_generated_texts": 30, "stats_generated_length": 6}
    calls = []
    original = generated_corpus._sample
    monkeypatch.setattr(generated_corpus, "_sample", lambda *a, **k: calls.append(len(a[2])) or original(*a, **k))
    ctx = _context(tiny_gemma)
    ctx.edit_lang = "zh"
    with caplog.at_level("WARNING"):
        build_method("rome", ctx, small).ensure_prepared()
    assert "generates itself in 'zh'" in caplog.text and sum(calls) == 30
    (cached,) = (tmp_path / "cache" / "stats" / "generated").glob("zh-*.json")
    texts = __import__("json").loads(cached.read_text(encoding="utf-8"))
    assert len(texts) == 30 and any(text.startswith("问题：") for text in texts)
    assert any((tmp_path / "cache" / "stats").rglob("layer1-*.pt"))
    calls.clear()
    build_method("rome", ctx, small).ensure_prepared()  # the texts come from the cache
    assert calls == []
    ctx.edit_lang = "en"
    build_method("rome", ctx, small).ensure_prepared()  # another language: its own texts
    assert sum(calls) == 30 and len(list((tmp_path / "cache" / "stats" / "generated").glob("*.json"))) == 2


def test_a_shipped_corpus_is_read_instead_of_generating(tiny_gemma, tmp_path, monkeypatch):
    """Corpora shipped in sample_data/generated/ are found by the same weights-based key as the cache."""
    import json

    from bizsre_tasks.editing import generated_corpus, second_moments

    ctx = _context(tiny_gemma)
    first = second_moments.generated_corpus(ctx.model, ctx.tokenizer, ctx.layout, "en", count=30, length=6, cache_dir=tmp_path / "a", progress=False)
    (written,) = (tmp_path / "a" / "stats" / "generated").glob("en-*.json")
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    (shipped / written.name).write_text(json.dumps([f"shipped text {i}" for i in range(30)]), encoding="utf-8")
    monkeypatch.setattr(generated_corpus, "SHIPPED_DIR", shipped)
    monkeypatch.setattr(generated_corpus, "_sample", lambda *a, **k: pytest.fail("generated although a corpus ships"))
    again = second_moments.generated_corpus(ctx.model, ctx.tokenizer, ctx.layout, "en", count=30, length=6, cache_dir=tmp_path / "b", progress=False)
    assert again.texts[0] == "shipped text 0" and first.texts[0] != "shipped text 0"


def test_sample_fallback_is_the_default(tiny_gemma, tmp_path, caplog):
    with caplog.at_level("WARNING"):
        build_method("rome", _context(tiny_gemma), QUICK).ensure_prepared()
    assert "using the bundled 20-case sample" in caplog.text and not (tmp_path / "cache" / "stats" / "generated").exists()
