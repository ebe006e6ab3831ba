"""Typed failures of the model (pure Python: torch is only looked at when it is already imported).

The runtime raises :class:`ModelError` when the model itself fails while encoding or generating,
and :class:`ModelOutOfMemory` when that failure is the device running out of memory (the runtime
has already dropped its caches then). Callers branch on the type, never on the message.
"""
from __future__ import annotations

import sys


class ModelError(RuntimeError):
    """The model failed on one call (encode or generate); the runtime stays usable."""

    def __init__(self, message: str, *, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.cause = cause


class ModelOutOfMemory(ModelError):
    """The device ran out of memory during a call; the runtime's caches were dropped."""


def is_out_of_memory(exc: BaseException) -> bool:
    """True for torch's (CUDA or other accelerator) out-of-memory errors."""
    torch = sys.modules.get("torch")
    if torch is None:  # no torch loaded: nothing can have raised its OOM error
        return False
    kinds = tuple(k for k in (getattr(torch, "OutOfMemoryError", None),
                              getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None))
                  if isinstance(k, type))
    return bool(kinds) and isinstance(exc, kinds)


def as_model_error(exc: BaseException) -> ModelError:
    """``exc`` as a typed model error: itself when it is one, else wrapped (with its type in the message)."""
    if isinstance(exc, ModelError):
        return exc
    kind = ModelOutOfMemory if is_out_of_memory(exc) else ModelError
    error = kind(f"{type(exc).__name__}: {exc}", cause=exc)
    error.__cause__ = exc
    return error
