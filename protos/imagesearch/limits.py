"""Limits of the contract that both services enforce and clients can check before sending."""

from __future__ import annotations

# Characters in one text (EmbedTexts.texts[i], QueryRequest.text). A text model reads a
# context of tens to hundreds of tokens, a few hundred to a few thousand characters; a
# longer text is a mistake or an attack, refused (TEXT_TOO_LONG) rather than cut unseen.
MAX_TEXT_CHARS = 4096
