"""Hyperparameter tables for the docs, generated from each method's `default_hparams`.

The default is the class's value; the meaning is the comment on the key's line where the dict is
written (the method's module, or a module it takes shared keys from); family overrides come from
`family_hparams`. `scripts/make_docs.py` writes the tables into docs/methods.md between markers, and a
test checks the committed file matches.
"""

from __future__ import annotations

import inspect
import io
import json
import re
import sys
import tokenize

from bizsre_tasks.editing.registry import METHODS, method_class

KEY_LINE = re.compile(r"""^\s*["'](?P<key>\w+)["']\s*:""")


def _key_comments(module) -> dict[str, str]:
    """key -> the comment on the line that writes `"key": value` in the module's source, else the block of
    comment lines right above it."""
    source = inspect.getsource(module)
    comments: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
    lines = source.splitlines()
    found: dict[str, str] = {}
    for number, line in enumerate(lines, start=1):
        match = KEY_LINE.match(line)
        if not match:
            continue
        if number in comments:
            found.setdefault(match["key"], comments[number])
            continue
        block, above = [], number - 1
        while above >= 1 and lines[above - 1].strip().startswith("#"):
            block.insert(0, comments[above])
            above -= 1
        if block:
            found.setdefault(match["key"], " ".join(block))
    return found


def _value(value) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else (f"`{value}`" if value else '""')
    return text.replace("|", "\\|")


def hparam_table(method: str) -> str:
    cls = method_class(method)
    comments: dict[str, str] = {}
    for klass in cls.__mro__:  # the method's own module first, then those of its bases
        module = sys.modules.get(klass.__module__)
        if module is not None and klass.__module__.startswith("bizsre_tasks."):
            for key, text in _key_comments(module).items():
                comments.setdefault(key, text)
    defaults = cls.default_hparams
    if not defaults:
        return "(no hyperparameters)\n"
    families = getattr(cls, "family_hparams", {}) or {}
    rows = ["| hparam | default | per model family | meaning |", "|---|---|---|---|"]
    for key, value in defaults.items():
        overrides = ", ".join(f"{family}: {_value(hp[key])}" for family, hp in sorted(families.items()) if key in hp)
        meaning = comments.get(key, "").replace("|", "\\|")
        rows.append(f"| `{key}` | {_value(value)} | {overrides} | {meaning} |")
    return "\n".join(rows) + "\n"


def tables() -> dict[str, str]:
    return {method: hparam_table(method) for method in METHODS}
