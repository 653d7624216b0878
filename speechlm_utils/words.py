"""`Word`: one timed word, the unit placed on the token stream.

It lives in a module of its own, with no heavy imports, so that acquisition (``index``,
``scrape``, ``captions``) never loads torch or Whisper.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Word:
    """One word with its time in seconds (relative to its chunk, or to its video)."""

    text: str  # as in running text, usually with its leading space: " Hello"
    start_s: float
    end_s: float
    probability: float = 1.0

    def shifted(self, offset_s: float) -> Word:
        """The same word ``offset_s`` later (chunk time -> video time)."""
        return Word(self.text, self.start_s + offset_s, self.end_s + offset_s, self.probability)
