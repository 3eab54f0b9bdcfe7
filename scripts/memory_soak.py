#!/usr/bin/env python
"""Memory over many consecutive edits: RSS after every edit of one method on the default model.

    python scripts/memory_soak.py --method rome --edits 300 --checkpoints 50,300 [--test-file F]

Each step applies the edit of the next test case (cycling through the file), answers its reliability
question under the edit (teacher forcing) and restores the model, the way edited-hf does per case
(including the method's `precompute` for each chunk of `--edit-batch` cases).
Prints the RSS at the checkpoints and writes a JSON with every step's RSS.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import psutil


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="rome")
    parser.add_argument("--edits", type=int, default=300)
    parser.add_argument("--checkpoints", default="50,300")
    parser.add_argument("--test-file")
    parser.add_argument("--edit-lang", default="en")
    parser.add_argument("--pretrained")
    parser.add_argument("--edit-batch", type=int, default=4, help="cases per precompute chunk (edited-hf's edit_batch)")
    parser.add_argument("--json", default="memory_soak.json")
    args = parser.parse_args()

    from bizsre_tasks.commands.bench import default_test_file
    from bizsre_tasks.editing.base import EditRequest
    from bizsre_tasks.editing_wrapper import EditedHFLM
    from bizsre_tasks.tasks import data_loading, prompts
    from bizsre_tasks.wrapper.teacher_forcing import teacher_forced_answers

    test_set = data_loading.load_test_set(args.test_file or default_test_file())
    lm = EditedHFLM(pretrained=args.pretrained, method=args.method, edit_lang=args.edit_lang, device="cpu")
    lm.editor.ensure_prepared()
    template = prompts.prompt_template(args.edit_lang)
    separator = prompts.answer_separator(template)
    process = psutil.Process()
    checkpoints = {int(c) for c in args.checkpoints.split(",")}
    trace, start = [], time.perf_counter()
    def request_for(step: int) -> EditRequest:
        part = test_set.cases[(step - 1) % len(test_set.cases)].part(args.edit_lang)
        prompt = template.format(question=prompts.clean_question(part.src))
        return EditRequest(prompt=prompt, target=part.alt, subject=part.subject, lang=args.edit_lang, target_separator=separator, case_key=f"soak:{step}")

    for step in range(1, args.edits + 1):
        request = request_for(step)
        if (step - 1) % args.edit_batch == 0:  # as edited-hf does: the chunk's shared work first
            lm.editor.precompute([request_for(s) for s in range(step, min(step + args.edit_batch, args.edits + 1))])
        prompt = request.prompt
        applied = lm.editor.apply(request)
        try:
            teacher_forced_answers(lm.model, lm.tokenizer, [applied.rewrite_prompt(prompt)], [request.target_text])
        finally:
            applied.restore()
        rss_gb = process.memory_info().rss / 2**30
        trace.append({"edit": step, "rss_gb": rss_gb, "elapsed_s": time.perf_counter() - start})
        if step in checkpoints:
            print(f"after {step} edits: RSS {rss_gb:.3f} GB ({time.perf_counter() - start:.0f} s)", flush=True)
    with open(args.json, "w") as handle:
        json.dump({"method": args.method, "trace": trace}, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
