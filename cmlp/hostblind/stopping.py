"""When a generation ends and which text each token releases (stage 0, model-family independent).

``Stopper`` turns the stream of sampled ids into the client's events: the
newly decoded text of each token and, at the end, the finish reason.

* Decoding is incremental: the text of the last few ids is decoded and
  compared with what was already emitted, so a token that completes a UTF-8
  character releases it and an incomplete one releases "" (the decoder's
  U+FFFD is never emitted).
* Stop sequences are matched on the decoded text.  Text that could be the
  start of a stop sequence is held back until it is either completed (the
  generation ends with "stop"; the stop sequence and anything after it are
  never emitted) or ruled out (released with a later token).
* ``max_tokens`` ends with "length", an EOS id with "eos" (the EOS token is
  reported with empty text and counted as generated).  Held-back text, and
  the bytes of a character the generation cut in half (as U+FFFD), are
  released with the last token.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

from cmlp.hostblind.params import SamplingParams

REPLACEMENT = "\ufffd"
_CONTEXT = 6  # ids of decoder context kept before the unreleased ones


class Stopper:
    def __init__(
        self,
        decode: Callable[[Sequence[int]], str],
        params: SamplingParams,
        eos_ids: Sequence[int],
        context_ids: Sequence[int] = (),
    ):
        self.decode = decode
        self.max_tokens = params.max_tokens
        self.stops = tuple(params.stop)
        self.eos_ids = frozenset(int(i) for i in eos_ids)
        # the last prompt ids give the decoder its context (a leading space, say)
        self._ids = [int(i) for i in context_ids[-_CONTEXT:]]
        self._prefix = 0  # decode window start
        self._read = len(self._ids)  # ids before this are emitted text
        self._held = ""  # decoded, not yet released (possible stop prefix)
        self.completion_tokens = 0
        self.finish_reason: Optional[str] = None

    def push(self, token_id: int) -> Tuple[str, Optional[str]]:
        """Account one sampled id: ``(text to emit now, finish reason or None)``."""
        if self.finish_reason is not None:
            raise RuntimeError("push after the generation finished")
        self.completion_tokens += 1
        if token_id in self.eos_ids:
            self.finish_reason = "eos"
            out, self._held = self._held + self._decode_new(final=True), ""
            return out, "eos"
        self._ids.append(int(token_id))
        text = self._held + self._decode_new()
        self._held = ""
        if self.stops:
            cut = _first_stop(text, self.stops)
            if cut is not None:
                self.finish_reason = "stop"
                return text[:cut], "stop"
            keep = _stop_prefix_len(text, self.stops)
            if keep:
                text, self._held = text[:-keep], text[-keep:]
        if self.completion_tokens >= self.max_tokens:
            self.finish_reason = "length"
            text, self._held = text + self._held + self._decode_new(final=True), ""
            return text, "length"
        return text, None

    def _decode_new(self, final: bool = False) -> str:
        """Text completed by the ids since the last release ("" inside a UTF-8 character).

        ``final``: the generation ends here, so an incomplete character is
        released as the decoder renders it (U+FFFD), as reference mode prints it.
        """
        ids = self._ids
        before = self.decode(ids[self._prefix : self._read]) if self._read > self._prefix else ""
        after = self.decode(ids[self._prefix :])
        if len(after) <= len(before) or (after.endswith(REPLACEMENT) and not final):
            return ""
        self._prefix, self._read = self._read, len(ids)
        if self._prefix > _CONTEXT:  # keep the window (and the list) short
            drop = self._prefix - _CONTEXT
            del ids[:drop]
            self._prefix -= drop
            self._read -= drop
        return after[len(before) :]


def _first_stop(text: str, stops) -> Optional[int]:
    best = None
    for s in stops:
        i = text.find(s)
        if i >= 0 and (best is None or i < best):
            best = i
    return best


def _stop_prefix_len(text: str, stops) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of a stop sequence."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best
