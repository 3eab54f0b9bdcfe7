"""Internals of the `edited-hf` model (`bizsre_tasks/editing_wrapper.py`): planning, answering, caching, checks."""
