"""Page tokens of ListRecords (AIP-158): opaque to callers, checked when they come back.

A token wraps the store's own cursor with what it continues (store, namespace, prefix),
so a token handed to another listing, or one that was tampered with, is refused as
INVALID_ARGUMENT instead of silently listing something else.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

from search_service.errors import InvalidArgument

VERSION = 1
MAX_TOKEN_LENGTH = 8192


@dataclass(frozen=True, slots=True)
class Listing:
    """What a listing walks; a token is only good for the listing that issued it."""

    store: str
    namespace: str
    prefix: str

    def token(self, cursor: str) -> str:
        """The page token that continues at the store's `cursor`; "" once it is done."""
        if not cursor:
            return ""
        body = [VERSION, self.store, self.namespace, self.prefix, cursor]
        return base64.urlsafe_b64encode(json.dumps(body).encode()).decode().rstrip("=")

    def cursor(self, token: str) -> str:
        """The store's cursor in `token` ("" for the first page); InvalidArgument if the
        token is not one this listing issued."""
        if not token:
            return ""
        try:
            if len(token) > MAX_TOKEN_LENGTH:
                raise ValueError("too long")
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            version, store, namespace, prefix, cursor = json.loads(raw)
        # RecursionError: JSON nested deeper than Python's decoder goes ("[[[[...").
        except (binascii.Error, ValueError, TypeError, UnicodeDecodeError, RecursionError):
            raise refused("is not a page token of ListRecords") from None
        if version != VERSION or store != self.store:
            raise refused(
                f"was issued by another version or store (this service runs the {self.store} store)"
            )
        if (namespace, prefix) != (self.namespace, self.prefix):
            raise refused(
                f"continues the listing of namespace {namespace!r} with prefix {prefix!r}, "
                f"not of namespace {self.namespace!r} with prefix {self.prefix!r}"
            )
        if not isinstance(cursor, str) or not cursor:
            raise refused("is damaged")
        return cursor


def refused(why: str) -> InvalidArgument:
    """The INVALID_ARGUMENT for a page token (or the store cursor inside one) that `why`."""
    return InvalidArgument(
        f"page_token {why}; pass the next_page_token of the previous page of the same "
        'listing, or "" to start again',
        field="page_token",
        reason="INVALID_PAGE_TOKEN",
    )
