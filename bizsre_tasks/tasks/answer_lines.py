"""The answer of a generated continuation: its first non-empty line.

Models often open an answer with a newline ("Answer:\\n Paris"); stopping generation at the first
newline would leave such answers empty, and two empty answers would agree perfectly in locality. The
tasks therefore do not stop at a newline (generation ends at `max_gen_toks` or the end-of-sequence
token) and this filter keeps the first line with visible text. Answers of the `teacher_forced` and
`paper` protocols are argmax decodings, not generations, and pass unchanged.
"""

from __future__ import annotations

# Protocols whose answers are generated text.
GENERATED_PROTOCOLS = ("generate",)


def first_nonempty_line(text: str) -> str:
    for line in text.split("\n"):
        if line.strip():
            return line.strip()
    return ""


def filter_answers(resps: list, docs: list[dict]) -> list:
    """lm-eval `custom` filter: each instance's responses reduced to their first non-empty line; a single
    response comes back as a string, as the harness's default `take_first` filter returns it."""
    filtered = []
    for answers, doc in zip(resps, docs):
        if doc.get("protocol", "generate") in GENERATED_PROTOCOLS:
            answers = [first_nonempty_line(answer) for answer in answers]
        filtered.append(answers[0] if len(answers) == 1 else list(answers))
    return filtered


class EndAfterFirstLine:
    """A `transformers` logits processor that ends a row's generation (forces the end-of-sequence token)
    once its continuation holds a non-empty line followed by a newline: the rest would be cut by
    `first_nonempty_line` anyway. `edited-hf` passes it to generation; the answers are unchanged.

    It tells a new generation from the next step of the current one by the length of what it is given
    (not longer than last time: a new one), which holds within one harness `generate_until` call, whose
    batches come longest first. A call whose prompts may be longer than the previous call's output needs
    its own instance."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.eos_id = tokenizer.eos_token_id
        self.start: int | None = None
        self.last_length = -1

    def __deepcopy__(self, memo):  # the harness deep-copies generation kwargs; the tokenizer need not be
        return self

    def __call__(self, input_ids, scores):
        length = input_ids.shape[1]
        if self.start is None or length <= self.last_length:  # a new generate call
            self.start = length
        self.last_length = length
        if self.eos_id is None or length == self.start:
            return scores
        for row, ids in enumerate(input_ids[:, self.start :].tolist()):
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            if "\n" in text.lstrip():
                scores[row] = -float("inf")
                scores[row, self.eos_id] = 0.0
        return scores
