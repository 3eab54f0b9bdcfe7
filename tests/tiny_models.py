"""Tiny random models and a tokenizer built offline inside the tests (no hub access needed)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

SAMPLE = Path(__file__).resolve().parents[1] / "bizsre_tasks" / "sample_data" / "bizsre_sample_en_zh.json"


def _corpus() -> list[str]:
    texts = ["Question: Answer: 问题：答案："]
    for case in json.loads(SAMPLE.read_text(encoding="utf-8")):
        for part in case.values():
            texts += [part["src"], part["rephrase"], part["alt"], part["loc"], part["loc_ans"]]
            texts += list(part["portability"].values())
    return texts


def build_tokenizer(folder: Path):
    """A byte-level BPE tokenizer (vocabulary ~600) trained on the demo sample; handles any script."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(unk_token=None))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=["<pad>", "<eos>", "<bos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(_corpus(), trainer=trainer)
    from tokenizers import processors

    bos_id = core.token_to_id("<bos>")
    core.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", bos_id)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
    tokenizer.save_pretrained(folder)
    return tokenizer


def build_tiny_model(folder: Path, family: str = "gemma3_text", seed: int = 0, context: int = 512) -> Path:
    """Save a tiny random causal LM of `family` (gemma3_text, llama, gpt2) with the tiny tokenizer.

    `context` is the model's context window (max_position_embeddings / n_positions)."""
    from transformers import AutoModelForCausalLM, Gemma3TextConfig, GPT2Config, LlamaConfig

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(folder)
    vocab = len(tokenizer)
    common = dict(vocab_size=vocab, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    if family == "gemma3_text":
        config = Gemma3TextConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=1,
            head_dim=16, max_position_embeddings=context, sliding_window=64, **common,
        )
    elif family == "llama":
        config = LlamaConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=1,
            max_position_embeddings=context, **common,
        )
    elif family == "gpt2":
        config = GPT2Config(n_embd=32, n_layer=4, n_head=2, n_positions=context, **common)
    else:
        raise ValueError(family)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(folder)
    return folder


def flat_train_file(folder: Path, count: int = 12) -> Path:
    """A flat-schema training file (with rephrase and loc) built from the bundled sample."""
    records = []
    for index, case in enumerate(json.loads(SAMPLE.read_text(encoding="utf-8"))):
        part = case["en"]
        records.append({key: part[key] for key in ("subject", "src", "rephrase", "alt", "loc", "loc_ans")})
    records = (records * (count // len(records) + 1))[:count]
    for index, record in enumerate(records):  # distinct questions
        record["src"] = f"{record['src']} ({index})"
    path = folder / "train.json"
    path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    return path
