"""Booking confirmation codes: short, unambiguous when spoken, easy to find in a transcript."""

from __future__ import annotations

import re
import secrets

# No 0/O, 1/I/L, 5/S, 8/B: letters and digits that callers and ASR confuse.
CODE_ALPHABET = "ACDEFGHJKMNPQRTUVWXY234679"
CODE_LENGTH = 6
CODE_PATTERN = re.compile(rf"\b[{CODE_ALPHABET}]{{{CODE_LENGTH}}}\b")


def new_confirmation_code() -> str:
    """A random code with at least one letter and one digit, so no code is an ordinary word."""
    while True:
        code = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
        if any(c.isdigit() for c in code) and any(c.isalpha() for c in code):
            return code
