"""Host-blind mode's messages and their state machines, sans I/O (one module for both sides).

Every message is the payload of one sealed Data frame of a SecureChannel and
starts with ``type u8 | seq u64`` (little-endian).  ``seq`` names one
generation; the state tables are kept per sequence, so many sequences can be
in flight on one link; a batched forward's rows travel together as one
StepGroup (stage -> stage) or SampledGroup (feedback) message.  Nothing here does I/O: ``Endpoint.send(event) -> bytes`` checks
that the event is allowed now and encodes it, ``Endpoint.receive(bytes) ->
event`` decodes (bounds first, never trusting a length) and checks it.  A
message that is malformed or not allowed in the sequence's state raises
``ProtocolError``.

Links and roles (docs/host-blind.md):
  client  <-> stage 0   ``CLIENT`` / ``STAGE0``: Generate, Cancel, Info / Started, Token,
                        Finished, Error, InfoReply
  stage i  -> stage i+1 ``UPSTREAM`` / ``DOWNSTREAM``: Begin, Chunk / Step / StepGroup
                        (+ tensors), End, Fail
  last     -> stage 0   the same link kind (feedback): Sampled, SampledGroup, Fail

Sizes the host could read are padded: Generate to a multiple of 256 bytes,
Started and Token to a multiple of 64, so a ciphertext's length tells the
host the prompt's length class, not its exact length or a token's text length.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple, Union

from cmlp import strict_json
from cmlp.errors import ProtocolError

# -- message types ----------------------------------------------------------------
GENERATE, CANCEL, INFO = 0x01, 0x02, 0x03
STARTED, TOKEN, FINISHED, ERROR, INFO_REPLY = 0x11, 0x12, 0x13, 0x14, 0x15
BEGIN, STEP, END, FAIL, CHUNK, STEP_GROUP = 0x21, 0x22, 0x23, 0x24, 0x25, 0x26
SAMPLED, SAMPLED_GROUP = 0x31, 0x32
GROUP_TYPES = (STEP_GROUP, SAMPLED_GROUP)

_HEAD = struct.Struct("<BQ")  # type, seq
HEAD = _HEAD.size
_TOKEN = struct.Struct("<IIH")  # index, token id, text bytes
_FINISHED = struct.Struct("<BII")  # reason, prompt tokens, completion tokens
_ERROR = struct.Struct("<BH")  # code, message bytes
_BEGIN = struct.Struct("<ddIBQ")  # temperature, top_p, top_k, has_seed, seed
_STEP = struct.Struct("<IIB")  # step, context length after it, tensors
_CHUNK = struct.Struct("<IB")  # context length after it, tensors
_SAMPLED = struct.Struct("<II")  # step, token id
_GROUP = struct.Struct("<H")  # rows
_STEP_ROW = struct.Struct("<QIII")  # seq, step, context length after it, tokens of the row
_SAMPLED_ROW = struct.Struct("<QII")  # seq, step, token id
_COUNT = struct.Struct("<I")

MAX_GENERATE_BYTES = 2 << 20  # JSON body of a Generate (prompt <= 1 MiB)
MAX_ERROR_TEXT = 1024
MAX_INFO_BYTES = 1 << 20  # InfoReply JSON (a chat template can be long)
MAX_TOKEN_TEXT = 4096
MAX_STEP_TENSORS = 8
MAX_PROMPT_IDS = 1 << 16
MAX_IN_FLIGHT = 64  # sequences one endpoint tracks at once
GENERATE_PAD, SMALL_PAD = 256, 64

REASONS = {1: "length", 2: "eos", 3: "stop"}
REASON_CODES = {v: k for k, v in REASONS.items()}
# error codes -> the client's exception (cmlp.client maps them)
ERR_INVALID, ERR_CONTEXT, ERR_BUSY, ERR_UNAVAILABLE, ERR_INTERNAL = 1, 2, 3, 4, 5
ERROR_CODES = (ERR_INVALID, ERR_CONTEXT, ERR_BUSY, ERR_UNAVAILABLE, ERR_INTERNAL)


# -- events -----------------------------------------------------------------------
@dataclass(frozen=True)
class Generate:
    seq: int
    body: dict  # {"prompt": str} or {"prompt_ids": [int]}, plus "params": {...}
    type = GENERATE


@dataclass(frozen=True)
class Cancel:
    seq: int
    type = CANCEL


@dataclass(frozen=True)
class Info:
    """Ask stage 0 for the tokenizer's metadata (chat template, special tokens)."""

    seq: int
    type = INFO


@dataclass(frozen=True)
class InfoReply:
    seq: int
    body: dict  # {"chat_template", "bos_token", "eos_token"}: str or None each
    type = INFO_REPLY


@dataclass(frozen=True)
class Started:
    seq: int
    prompt_ids: Tuple[int, ...]
    type = STARTED


@dataclass(frozen=True)
class Token:
    seq: int
    step: int  # 0, 1, 2, ...: a dropped Token is detected at the next one
    token_id: int
    text: str
    type = TOKEN


@dataclass(frozen=True)
class Finished:
    seq: int
    reason: str
    prompt_tokens: int
    completion_tokens: int
    type = FINISHED


@dataclass(frozen=True)
class Error:
    seq: int
    code: int
    message: str
    type = ERROR


@dataclass(frozen=True)
class Begin:
    """Sampling parameters for ``seq``, for the last stage (travels ahead of the first Step)."""

    seq: int
    temperature: float
    top_p: float
    top_k: int
    seed: Optional[int]
    type = BEGIN


@dataclass(frozen=True)
class Step:
    """One forward step of ``seq``; exactly ``tensors`` Tensor frames follow on the link."""

    seq: int
    step: int
    seq_len: int  # context length once this step's tokens are in (cache check)
    tensors: int
    type = STEP


@dataclass(frozen=True)
class StepRow:
    """One row of a StepGroup: ``tokens`` positions of sequence ``seq`` at ``step``."""

    seq: int
    step: int
    seq_len: int  # context length once the row is in (cache check)
    tokens: int


@dataclass(frozen=True)
class StepGroup:
    """The rows of one batched forward (decode rows and short prompts' Step 0), in one
    message; exactly one Tensor frame follows, [1, sum(tokens), C]: the rows' positions
    one after the other, in the order listed.  Every row is checked as a Step of its
    sequence.  (One message and one sealed frame per forward, not two per row.)"""

    rows: Tuple[StepRow, ...]
    seq: int = 0  # the head's sequence field is unused: always 0
    type = STEP_GROUP


@dataclass(frozen=True)
class Chunk:
    """A prompt chunk of ``seq`` that is run but not sampled (chunked prefill: each stage
    forwards one chunk per step instead of the whole prompt at once); only before the
    sequence's first Step, which carries the prompt's last chunk."""

    seq: int
    seq_len: int  # context length once this chunk is in (cache check)
    tensors: int
    type = CHUNK


@dataclass(frozen=True)
class End:
    """``seq`` is over: drop its state (sent by stage 0, forwarded to the last stage)."""

    seq: int
    type = END


@dataclass(frozen=True)
class Fail:
    """A stage could not process ``seq``; forwarded to stage 0, which tells the client."""

    seq: int
    message: str
    type = FAIL


@dataclass(frozen=True)
class Sampled:
    """The last stage's token for ``seq`` at ``step`` (feedback link)."""

    seq: int
    step: int
    token_id: int
    type = SAMPLED


@dataclass(frozen=True)
class SampledGroup:
    """The last stage's tokens for the rows of one forward (feedback link); each row is
    checked as a Sampled of its sequence."""

    rows: Tuple[Sampled, ...]
    seq: int = 0  # the head's sequence field is unused: always 0
    type = SAMPLED_GROUP


Event = Union[
    Generate,
    Cancel,
    Info,
    InfoReply,
    Started,
    Token,
    Finished,
    Error,
    Begin,
    Step,
    StepGroup,
    Chunk,
    End,
    Fail,
    Sampled,
    SampledGroup,
]
INFO_KEYS = ("chat_template", "bos_token", "eos_token")


# -- encoding ---------------------------------------------------------------------
def _pad(buf: bytes, unit: int) -> bytes:
    return buf + b"\0" * (-len(buf) % unit)


def _text(raw: bytes, limit: int, what: str) -> str:
    if len(raw) > limit:
        raise ProtocolError(f"{what} longer than {limit} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(f"{what} is not valid UTF-8") from None


def encode(ev: Event) -> bytes:
    head = _HEAD.pack(ev.type, ev.seq)
    t = ev.type
    # isinstance (one class per type code) rather than `t == ...`, so each branch is typed
    if isinstance(ev, Generate):
        body = json.dumps(ev.body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        # JSON allows trailing whitespace: pad with spaces, the body stays valid as is
        body += b" " * (-(HEAD + len(body)) % GENERATE_PAD)
        if len(body) > MAX_GENERATE_BYTES:
            raise ProtocolError(f"request larger than {MAX_GENERATE_BYTES} bytes")
        return head + body
    if isinstance(ev, (Cancel, End, Info)):
        return head
    if isinstance(ev, InfoReply):
        body = json.dumps(ev.body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        if len(body) > MAX_INFO_BYTES:
            raise ProtocolError(f"model info larger than {MAX_INFO_BYTES} bytes")
        return head + body
    if isinstance(ev, Started):
        if len(ev.prompt_ids) > MAX_PROMPT_IDS:
            raise ProtocolError(f"more than {MAX_PROMPT_IDS} prompt ids")
        ids = struct.pack(f"<{len(ev.prompt_ids)}I", *ev.prompt_ids)
        return _pad(head + _COUNT.pack(len(ev.prompt_ids)) + ids, SMALL_PAD)
    if isinstance(ev, Token):
        raw = ev.text.encode("utf-8")
        if len(raw) > MAX_TOKEN_TEXT:
            raise ProtocolError(f"token text longer than {MAX_TOKEN_TEXT} bytes")
        return _pad(head + _TOKEN.pack(ev.step, ev.token_id, len(raw)) + raw, SMALL_PAD)
    if isinstance(ev, Finished):
        return head + _FINISHED.pack(REASON_CODES[ev.reason], ev.prompt_tokens, ev.completion_tokens)
    if isinstance(ev, (Error, Fail)):
        raw = ev.message.encode("utf-8")[:MAX_ERROR_TEXT]
        raw = raw.decode("utf-8", "ignore").encode("utf-8")  # never cut a character
        code = ev.code if isinstance(ev, Error) else 0
        return head + _ERROR.pack(code, len(raw)) + raw
    if isinstance(ev, Begin):
        return head + _BEGIN.pack(ev.temperature, ev.top_p, ev.top_k, ev.seed is not None, ev.seed or 0)
    if isinstance(ev, Step):
        return head + _STEP.pack(ev.step, ev.seq_len, ev.tensors)
    if isinstance(ev, (StepGroup, SampledGroup)):
        if not 1 <= len(ev.rows) <= MAX_IN_FLIGHT or ev.seq != 0:
            raise ProtocolError(f"a group of {len(ev.rows)} rows (1..{MAX_IN_FLIGHT} allowed, head 0)")
        parts = [head, _GROUP.pack(len(ev.rows))]
        if isinstance(ev, StepGroup):
            parts += [_STEP_ROW.pack(r.seq, r.step, r.seq_len, r.tokens) for r in ev.rows]
        else:
            parts += [_SAMPLED_ROW.pack(r.seq, r.step, r.token_id) for r in ev.rows]
        return b"".join(parts)
    if isinstance(ev, Chunk):
        return head + _CHUNK.pack(ev.seq_len, ev.tensors)
    if isinstance(ev, Sampled):
        return head + _SAMPLED.pack(ev.step, ev.token_id)
    raise ProtocolError(f"cannot encode message type 0x{t:02x}")


def _fixed(payload, st: struct.Struct, what: str) -> tuple:
    if len(payload) != HEAD + st.size:
        raise ProtocolError(f"{what}: expected {HEAD + st.size} bytes, got {len(payload)}")
    return st.unpack_from(payload, HEAD)


def decode(payload) -> Event:
    """One message from untrusted bytes; ``ProtocolError`` if malformed."""
    payload = memoryview(payload)
    if len(payload) < HEAD:
        raise ProtocolError(f"message shorter than its {HEAD}-byte head")
    t, seq = _HEAD.unpack_from(payload, 0)
    n = len(payload)
    if t == GENERATE:
        if n > HEAD + MAX_GENERATE_BYTES:
            raise ProtocolError(f"request larger than {MAX_GENERATE_BYTES} bytes")
        try:
            body = strict_json.loads(bytes(payload[HEAD:]).decode("utf-8"))
        except ValueError:  # UnicodeDecodeError is one
            raise ProtocolError("request body is not valid UTF-8 JSON") from None
        if not isinstance(body, dict):
            raise ProtocolError("request body must be a JSON object")
        return Generate(seq, body)
    if t in (CANCEL, END, INFO):
        if n != HEAD:
            raise ProtocolError(f"message 0x{t:02x}: expected {HEAD} bytes, got {n}")
        if t == CANCEL:
            return Cancel(seq)
        return End(seq) if t == END else Info(seq)
    if t == INFO_REPLY:
        if n > HEAD + MAX_INFO_BYTES:
            raise ProtocolError(f"model info larger than {MAX_INFO_BYTES} bytes")
        try:
            body = strict_json.loads(bytes(payload[HEAD:]).decode("utf-8"))
        except ValueError:
            raise ProtocolError("model info is not valid UTF-8 JSON") from None
        if (
            not isinstance(body, dict)
            or set(body) != set(INFO_KEYS)
            or not all(v is None or isinstance(v, str) for v in body.values())
        ):
            raise ProtocolError(f"model info must map exactly {INFO_KEYS} to strings or null")
        return InfoReply(seq, body)
    if t == STARTED:
        if n < HEAD + _COUNT.size:
            raise ProtocolError("Started: truncated")
        (count,) = _COUNT.unpack_from(payload, HEAD)
        end = HEAD + _COUNT.size + 4 * count
        if count > MAX_PROMPT_IDS or end > n or n - end >= SMALL_PAD:
            raise ProtocolError(f"Started: {count} ids do not fit {n} bytes")
        ids = struct.unpack_from(f"<{count}I", payload, HEAD + _COUNT.size)
        return Started(seq, ids)
    if t == TOKEN:
        if n < HEAD + _TOKEN.size:
            raise ProtocolError("Token: truncated")
        step, tid, size = _TOKEN.unpack_from(payload, HEAD)
        start = HEAD + _TOKEN.size
        if start + size > n or n - start - size >= SMALL_PAD:
            raise ProtocolError(f"Token: {size} text bytes do not fit {n} bytes")
        return Token(seq, step, tid, _text(bytes(payload[start : start + size]), MAX_TOKEN_TEXT, "text"))
    if t == FINISHED:
        code, p, c = _fixed(payload, _FINISHED, "Finished")
        if code not in REASONS:
            raise ProtocolError(f"Finished: unknown reason {code}")
        return Finished(seq, REASONS[code], p, c)
    if t in (ERROR, FAIL):
        if n < HEAD + _ERROR.size:
            raise ProtocolError("Error: truncated")
        code, size = _ERROR.unpack_from(payload, HEAD)
        if HEAD + _ERROR.size + size != n:
            raise ProtocolError(f"Error: {size} text bytes do not match {n} bytes")
        text = _text(bytes(payload[HEAD + _ERROR.size :]), MAX_ERROR_TEXT, "error text")
        if t == FAIL:
            return Fail(seq, text)
        if code not in ERROR_CODES:
            raise ProtocolError(f"Error: unknown code {code}")
        return Error(seq, code, text)
    if t == BEGIN:
        temp, top_p, top_k, has_seed, s = _fixed(payload, _BEGIN, "Begin")
        if has_seed not in (0, 1):
            raise ProtocolError("Begin: bad seed flag")
        if not (math.isfinite(temp) and math.isfinite(top_p)):
            raise ProtocolError("Begin: temperature and top_p must be finite")
        return Begin(seq, temp, top_p, top_k, s if has_seed else None)
    if t == STEP:
        step, seq_len, count = _fixed(payload, _STEP, "Step")
        if not 1 <= count <= MAX_STEP_TENSORS:
            raise ProtocolError(f"Step: {count} tensors (1..{MAX_STEP_TENSORS} allowed)")
        return Step(seq, step, seq_len, count)
    if t in GROUP_TYPES:
        return _decode_group(payload, t, seq)
    if t == CHUNK:
        seq_len, count = _fixed(payload, _CHUNK, "Chunk")
        if not 1 <= count <= MAX_STEP_TENSORS:
            raise ProtocolError(f"Chunk: {count} tensors (1..{MAX_STEP_TENSORS} allowed)")
        return Chunk(seq, seq_len, count)
    if t == SAMPLED:
        step, tid = _fixed(payload, _SAMPLED, "Sampled")
        return Sampled(seq, step, tid)
    raise ProtocolError(f"unknown message type 0x{t:02x}")


def _decode_group(payload, t: int, head_seq: int) -> Union[StepGroup, SampledGroup]:
    what, row = ("StepGroup", _STEP_ROW) if t == STEP_GROUP else ("SampledGroup", _SAMPLED_ROW)
    n = len(payload)
    if n < HEAD + _GROUP.size:
        raise ProtocolError(f"{what}: truncated")
    (count,) = _GROUP.unpack_from(payload, HEAD)
    if head_seq != 0 or not 1 <= count <= MAX_IN_FLIGHT:
        raise ProtocolError(f"{what}: {count} rows under head {head_seq} (1..{MAX_IN_FLIGHT} under 0)")
    if n != HEAD + _GROUP.size + count * row.size:
        raise ProtocolError(f"{what}: {count} rows do not match {n} bytes")
    fields = row.iter_unpack(payload[HEAD + _GROUP.size :])
    if t == SAMPLED_GROUP:
        return SampledGroup(tuple(Sampled(*f) for f in fields))
    rows = tuple(StepRow(*f) for f in fields)
    if any(r.tokens < 1 for r in rows):
        raise ProtocolError("StepGroup: a row of no tokens")
    return StepGroup(rows)


# -- state machines ----------------------------------------------------------------
# One table per link kind: (role, state, direction, message type) -> next state.
# Direction "send" is checked on send(), "recv" on receive().  A sequence not
# yet known is in state IDLE; DONE removes it (its id may not be reused).
IDLE, WAIT_START, STREAMING, DONE = "IDLE", "WAIT_START", "STREAMING", "DONE"
WAIT_INFO = "WAIT_INFO"
ACTIVE = "ACTIVE"

CLIENT, STAGE0, UPSTREAM, DOWNSTREAM = "client", "stage0", "upstream", "downstream"

_CLIENT_LINK = {
    # client side
    (CLIENT, IDLE, "send", GENERATE): WAIT_START,
    (CLIENT, WAIT_START, "send", CANCEL): DONE,
    (CLIENT, STREAMING, "send", CANCEL): DONE,
    (CLIENT, WAIT_START, "recv", STARTED): STREAMING,
    (CLIENT, WAIT_START, "recv", ERROR): DONE,
    (CLIENT, STREAMING, "recv", TOKEN): STREAMING,
    (CLIENT, STREAMING, "recv", FINISHED): DONE,
    (CLIENT, STREAMING, "recv", ERROR): DONE,
    (CLIENT, IDLE, "send", INFO): WAIT_INFO,
    (CLIENT, WAIT_INFO, "recv", INFO_REPLY): DONE,
    (CLIENT, WAIT_INFO, "recv", ERROR): DONE,
    # stage 0 side (the mirror image)
    (STAGE0, IDLE, "recv", GENERATE): WAIT_START,
    (STAGE0, WAIT_START, "recv", CANCEL): DONE,
    (STAGE0, STREAMING, "recv", CANCEL): DONE,
    (STAGE0, WAIT_START, "send", STARTED): STREAMING,
    (STAGE0, WAIT_START, "send", ERROR): DONE,
    (STAGE0, STREAMING, "send", TOKEN): STREAMING,
    (STAGE0, STREAMING, "send", FINISHED): DONE,
    (STAGE0, STREAMING, "send", ERROR): DONE,
    (STAGE0, IDLE, "recv", INFO): WAIT_INFO,
    (STAGE0, WAIT_INFO, "send", INFO_REPLY): DONE,
    (STAGE0, WAIT_INFO, "send", ERROR): DONE,
}

# A stage link carries, per sequence: Begin (once, first), then prompt Chunks
# (any number, each followed by its tensors, only before Step 0), then Steps
# with step numbers 0, 1, 2, ... each followed by its tensors, then End; Fail
# may replace anything after Begin.  The feedback link carries Sampled with the
# step numbers of the Steps, or Fail.  UPSTREAM is the sending side.
_STAGE_LINK = {
    (UPSTREAM, IDLE, "send", BEGIN): ACTIVE,
    (UPSTREAM, ACTIVE, "send", STEP): ACTIVE,
    (UPSTREAM, ACTIVE, "send", CHUNK): ACTIVE,
    (UPSTREAM, ACTIVE, "send", SAMPLED): ACTIVE,
    (UPSTREAM, ACTIVE, "send", END): DONE,
    (UPSTREAM, ACTIVE, "send", FAIL): DONE,
    (DOWNSTREAM, IDLE, "recv", BEGIN): ACTIVE,
    (DOWNSTREAM, ACTIVE, "recv", STEP): ACTIVE,
    (DOWNSTREAM, ACTIVE, "recv", CHUNK): ACTIVE,
    (DOWNSTREAM, ACTIVE, "recv", SAMPLED): ACTIVE,
    (DOWNSTREAM, ACTIVE, "recv", END): DONE,
    (DOWNSTREAM, ACTIVE, "recv", FAIL): DONE,
}

TABLES = {CLIENT: _CLIENT_LINK, STAGE0: _CLIENT_LINK, UPSTREAM: _STAGE_LINK, DOWNSTREAM: _STAGE_LINK}


@dataclass
class _Seq:
    state: str = IDLE
    step: int = 0  # next expected Step / Sampled step number


@dataclass
class Endpoint:
    """One side of one link: per-sequence states, checked on every send and receive.

    ``sampled_link``: this link is the feedback link (Sampled instead of Steps,
    no Begin: the sequence starts with its first Sampled).
    """

    role: str
    sampled_link: bool = False
    seqs: Dict[int, _Seq] = field(default_factory=dict)
    finished: set = field(default_factory=set)  # recently finished ids (bounded)

    def state(self, seq: int) -> str:
        s = self.seqs.get(seq)
        if s is not None:
            return s.state
        return DONE if seq in self.finished else IDLE

    def _advance(self, ev: Event, direction: str) -> None:
        if isinstance(ev, (StepGroup, SampledGroup)):
            self._advance_group(ev, direction)
            return
        cur, nxt = self._check(ev.seq, ev.type, direction, getattr(ev, "step", None))
        if isinstance(ev, Chunk) and cur is not None and cur.step != 0:
            raise ProtocolError(f"sequence {ev.seq}: a prompt Chunk after Step {cur.step - 1}")
        if cur is None and len(self.seqs) >= MAX_IN_FLIGHT:
            raise ProtocolError(f"more than {MAX_IN_FLIGHT} sequences in flight")
        self._commit(ev.seq, cur, nxt, isinstance(ev, (Step, Sampled, Token)))

    def _check(self, seq: int, t: int, direction: str, step: Optional[int]) -> Tuple[Optional[_Seq], str]:
        """The sequence's record (None: not yet known) and its next state, if message type
        ``t`` (with ``step``, for the step-numbered ones) is allowed now; nothing changes."""
        cur = self.seqs.get(seq)
        state = cur.state if cur is not None else (DONE if seq in self.finished else IDLE)
        if self.sampled_link and state == IDLE and t in (SAMPLED, FAIL):
            state = ACTIVE  # the feedback link has no Begin
        nxt = TABLES[self.role].get((self.role, state, direction, t))
        if nxt is None:
            raise ProtocolError(
                f"{self.role}: message 0x{t:02x} not allowed for sequence {seq} in state {state} ({direction})"
            )
        if (self.sampled_link and t in (BEGIN, STEP, CHUNK)) or (not self.sampled_link and t == SAMPLED):
            raise ProtocolError(f"{self.role}: message 0x{t:02x} does not belong on this link")
        if step is not None and t in (STEP, SAMPLED, TOKEN):
            expected = cur.step if cur is not None else 0
            if step != expected:
                raise ProtocolError(f"sequence {seq}: step {step}, expected {expected}")
        return cur, nxt

    def _commit(self, seq: int, cur: Optional[_Seq], nxt: str, stepped: bool) -> None:
        if cur is None:
            cur = self.seqs[seq] = _Seq(nxt)
        if stepped:
            cur.step += 1
        if nxt == DONE:
            del self.seqs[seq]
            self.finished.add(seq)
            if len(self.finished) > 4 * MAX_IN_FLIGHT:
                self.finished.clear()  # ids are never reused: forgetting is safe
        else:
            cur.state = nxt

    def _advance_group(self, ev: Union[StepGroup, SampledGroup], direction: str) -> None:
        """Every row as a Step (Sampled) of its sequence, all checked before any changes:
        a group is taken whole or refused whole."""
        t = STEP if isinstance(ev, StepGroup) else SAMPLED
        rows: Tuple[Union[StepRow, Sampled], ...] = ev.rows
        if len({r.seq for r in rows}) != len(rows):
            raise ProtocolError("a group lists a sequence twice")
        checked = [self._check(r.seq, t, direction, r.step) for r in rows]
        new = sum(cur is None for cur, _ in checked)
        if new and len(self.seqs) + new > MAX_IN_FLIGHT:
            raise ProtocolError(f"more than {MAX_IN_FLIGHT} sequences in flight")
        for r, (cur, nxt) in zip(rows, checked, strict=True):
            self._commit(r.seq, cur, nxt, True)

    def send(self, ev: Event) -> bytes:
        self._advance(ev, "send")
        return encode(ev)

    def receive(self, payload) -> Event:
        ev = decode(payload)
        if isinstance(ev, SampledGroup) and self.sampled_link:
            # stage 0 ends sequences while their tokens are in flight: skip those rows (the
            # group-wise form of is_stale); an empty result means nothing is left to do
            live = tuple(r for r in ev.rows if not self._ended(r.seq))
            if len(live) != len(ev.rows):
                ev = SampledGroup(live)
                if not live:
                    return ev
        self._advance(ev, "recv")
        return ev

    def _ended(self, seq: int) -> bool:
        return seq in self.finished and seq not in self.seqs

    def forget(self, seq: int) -> None:
        """Drop a sequence locally (cancelled or failed on this side)."""
        if self.seqs.pop(seq, None) is not None:
            self.finished.add(seq)

    def is_stale(self, payload) -> bool:
        """A well-formed message for a sequence this side already finished (to be skipped);
        a group is stale when every row is."""
        if len(payload) < HEAD:
            return False
        t, seq = _HEAD.unpack_from(payload, 0)
        if t in GROUP_TYPES:
            try:
                ev = decode(payload)
            except ProtocolError:
                return False  # receive() reports it
            assert isinstance(ev, (StepGroup, SampledGroup))
            return all(self._ended(r.seq) for r in ev.rows)
        return self._ended(seq)
