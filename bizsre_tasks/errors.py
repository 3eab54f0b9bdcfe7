"""Errors that reach the user as one clear message and a non-zero exit, never a traceback."""

from __future__ import annotations


class BizsreError(Exception):
    """Base class for user-facing errors (bad input, bad arguments, missing files)."""


class ConfigurationError(BizsreError, ValueError):
    """A model argument, hyperparameter or option that cannot be used."""
