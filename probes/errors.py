"""Errors that say what went wrong, why, and how to fix it (the nnsight docs' symptom / cause / fix)."""

from __future__ import annotations


class VestigeError(Exception):
    """Base error. The message has three parts: the problem, its cause, and the fix."""

    def __init__(self, problem: str, cause: str | None = None, fix: str | None = None):
        self.problem, self.cause, self.fix = problem, cause, fix
        parts = [problem]
        if cause:
            parts.append(f"  cause: {cause}")
        if fix:
            parts.append(f"  fix:   {fix}")
        super().__init__("\n".join(parts))


class ModelLoadError(VestigeError):
    """A model spec could not be resolved or loaded safely."""


class ConceptFileError(VestigeError):
    """A concept file does not follow the data contract (docs/data.md)."""


class MismatchError(VestigeError):
    """Two models that must be comparable (base and unlearned) are not."""


class ContextLengthError(VestigeError):
    """An input is longer than the model's context window."""


class NonFiniteError(VestigeError):
    """NaN or inf found in weights or activations."""
