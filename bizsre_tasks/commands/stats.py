"""`bizsre stats`: precompute the key statistics ROME and MEMIT use (cached; see editing/second_moments.py)."""

from __future__ import annotations

import argparse


def _layers(text: str) -> list[int]:
    try:
        layers = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer indices such as 4,5,6, got {text!r}") from None
    if not layers:
        raise argparse.ArgumentTypeError("no layer given")
    return layers


def configure(name: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pretrained", default=None, help="model folder or hub id (default: the embedded Gemma 3 270M)")
    parser.add_argument("--layers", type=_layers, default=None,
                        help="comma-separated layers, e.g. 4,5,6 (default: the layers of --method's defaults for this model)")
    parser.add_argument("--method", choices=("rome", "memit"), default="memit",
                        help="whose default layers to use when --layers is not given (default: memit)")
    parser.add_argument("--corpus", nargs="+", default=None, metavar="FILE",
                        help="corpus files: question<TAB>answer .tsv, Bi-ZsRE .json, or plain text one sample per line "
                             "(default: $BIZSRE_TRAIN_FILE, else the bundled sample)")
    parser.add_argument("--max-samples", type=int, default=None, help="texts to use (0: all; default: the methods' stats_max_samples)")
    parser.add_argument("--max-length", type=int, default=None, help="tokens per text (default: the methods' stats_max_length)")
    parser.add_argument("--cache-dir", help="cache root (default: $BIZSRE_CACHE_DIR or ~/.cache/bizsre); statistics go to <root>/stats")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.set_defaults(_name=name)


def run(args: argparse.Namespace) -> int:
    import time

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bizsre_tasks.default_model import resolve_pretrained
    from bizsre_tasks.editing.base import EditingContext
    from bizsre_tasks.editing.kv import second_moments
    from bizsre_tasks.editing.layout import ModelLayout
    from bizsre_tasks.editing.registry import method_class, resolve_hparams
    from bizsre_tasks.errors import ConfigurationError

    if args.max_samples is not None and args.max_samples < 0:
        raise ConfigurationError("--max-samples must be ≥ 0")
    if args.max_length is not None and args.max_length < 2:
        raise ConfigurationError("--max-length must be ≥ 2")
    path = resolve_pretrained(args.pretrained, args.cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(args.device)
    model.requires_grad_(False)
    layout = ModelLayout.for_model(model)
    cls = method_class(args.method)
    hparams = resolve_hparams(cls, layout.model_type, {})
    if args.layers is None:
        context = EditingContext(model=model, tokenizer=tokenizer, layout=layout, device=torch.device(args.device), model_name=path)
        layers = cls(context, hparams).edit_layers()
    else:
        layers = args.layers
        for layer in layers:
            layout.check_layer(layer, "--layers")
    max_samples = hparams["stats_max_samples"] if args.max_samples is None else args.max_samples
    max_length = hparams["stats_max_length"] if args.max_length is None else args.max_length
    corpus = second_moments.load_corpus(second_moments.corpus_paths(args.corpus, None), max_samples)
    start = time.perf_counter()
    second_moments.second_moments(model, tokenizer, layout, layers, corpus, path, cache_dir=args.cache_dir, max_length=max_length)
    seconds = time.perf_counter() - start
    for layer in layers:
        print(f"layer {layer}: {second_moments.cache_path(path, layer, corpus, args.cache_dir)}")
    print(f"{len(corpus.texts)} texts from {corpus.description}; {seconds:.1f} s")
    return 0
