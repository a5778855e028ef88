"""A sequence's text as its tokens arrive: streamed pieces and stop strings.

Contract:
- The text of a sequence is its tokens' words joined by single spaces; special tokens (a
  word of None) add nothing. A token's piece is its word, with a leading space unless it
  is the first word of the text.
- Stop strings (as vLLM): when the text comes to contain one, the sequence stops and its
  final text ends just before the earliest occurrence; the stop string is not output.
- While stop strings are set, the end of the text that could still become the start of a
  stop string (the longest suffix that is a proper prefix of one) is held back and sent
  with a later piece, or dropped if the stop string completes. So pieces never have to be
  taken back: the concatenation of a sequence's pieces, the final flush included, is
  always its final text. Without stop strings each piece is exactly its token's text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


class TextStream:
    def __init__(self, word: Callable[[int], str | None], stop: Sequence[str] = ()) -> None:
        if any(not s for s in stop):
            raise ValueError("stop strings must not be empty")
        self.word = word
        self.stop = tuple(stop)
        self.text = ""
        self.sent = 0
        """How much of ``text`` has been handed out as pieces."""

    def push(self, token_id: int) -> tuple[str, bool]:
        """Add a token: (the piece to send now, whether a stop string ended the text)."""
        word = self.word(token_id)
        if word is None:
            return "", False
        before = len(self.text)
        self.text += f" {word}" if self.text else word
        if self.stop:
            found = [
                i for s in self.stop if (i := self.text.find(s, max(0, before - len(s) + 1))) >= 0
            ]
            if found:
                self.text = self.text[: min(found)]
                return self.flush(), True
        end = len(self.text) - self._held()
        piece, self.sent = self.text[self.sent : end], end
        return piece, False

    def flush(self) -> str:
        """What is left to send: the last piece of a finished sequence."""
        piece, self.sent = self.text[self.sent :], len(self.text)
        return piece

    def _held(self) -> int:
        """Length of the longest unsent suffix that is a proper prefix of a stop string."""
        unsent = self.text[self.sent :]
        held = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(unsent)), held, -1):
                if unsent.endswith(s[:n]):
                    held = n
                    break
        return held
