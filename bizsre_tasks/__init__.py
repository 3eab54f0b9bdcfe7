"""Cross-lingual knowledge editing (Bi-ZsRE) as lm-evaluation-harness tasks and the `edited-hf` model.

Layout (each folder a layer; imports run downwards only, see tests/test_layering.py):
  languages.py, errors.py, default_model.py   what every layer uses
  tasks/          the task side (documents, prompts, scoring, YAML generation; YAMLs in yaml/)
  editing/        the editing methods; editing/kv/ and editing/tensors/ hold their shared machinery
  training/       trainers of the trained methods (SERAC, MEND)
  wrapper/        internals of the `edited-hf` model in editing_wrapper.py
  experiments/    sweeps and the training-scale study
  report/, benchmark/, commands/ (the `bizsre` CLI, cli.py)
"""

from bizsre_tasks import _moved

_moved.install()
