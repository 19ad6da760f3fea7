"""Errors of embed_service.

    EmbedError                     base of everything this service raises
    ├── InvalidRequest             the request as a whole is wrong -> INVALID_ARGUMENT
    ├── Overloaded                 the admission queue is full -> RESOURCE_EXHAUSTED
    ├── ModelNotReady              the model is still loading -> UNAVAILABLE
    ├── BatcherStopped             the model's batcher is stopping or died -> UNAVAILABLE
    ├── ModelLoadError             the model could not be loaded (start-up only)
    └── ItemError                  one input of a batch is bad; reported in that item,
        ├── ImageEmpty               never raised through the call
        ├── ImageUnreadable
        ├── ImageTooLarge
        └── TextEmpty

The mapping to gRPC status codes lives in one place, `server.py`.
"""

from __future__ import annotations


class EmbedError(Exception):
    """Base of every error this service raises."""

    reason = "INTERNAL"


class InvalidRequest(EmbedError):
    reason = "INVALID_REQUEST"

    def __init__(self, message: str, *, field: str, reason: str = "INVALID_REQUEST") -> None:
        super().__init__(message)
        self.field = field
        self.reason = reason


class Overloaded(EmbedError):
    reason = "OVERLOADED"


class ModelNotReady(EmbedError):
    reason = "MODEL_LOADING"


class BatcherStopped(EmbedError):
    reason = "MODEL_STOPPED"


class ModelLoadError(EmbedError):
    reason = "MODEL_LOAD_FAILED"


class ItemError(EmbedError):
    """One input that cannot be embedded; the rest of its batch goes on."""

    reason = "INVALID_INPUT"


class ImageEmpty(ItemError):
    reason = "IMAGE_EMPTY"


class ImageUnreadable(ItemError):
    reason = "IMAGE_UNREADABLE"


class ImageTooLarge(ItemError):
    reason = "IMAGE_TOO_LARGE"


class TextEmpty(ItemError):
    reason = "TEXT_EMPTY"


class TextTooLong(ItemError):
    reason = "TEXT_TOO_LONG"
