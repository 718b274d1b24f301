"""Continuous batching in host-blind mode (docs/batching.md).

Stage 0 serves many client channels at once: an acceptor thread does the
handshakes and reads each request; the step loop admits requests into free
KV-cache slots, runs at most one prefill and one batched decode forward per
step over every sequence whose next token is known, streams tokens, and reads
Cancel / disconnects and the feedback link between steps.  A stage i > 0 runs
every decode row already buffered on its data_in as one forward, so rows that
left stage 0 together (one StepGroup message) stay one micro-batch down the ring.

Per sequence everything is as in the one-at-a-time loops (stage_loop.py): the
same step numbers and state tables (a group's row is checked as a Step of its
sequence), its own sampler RNG; a row's
result does not depend on the other rows of its batch, so outputs equal solo
runs exactly.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cmlp import trace
from cmlp.errors import (
    CmlpError,
    ContextTooLong,
    CryptoError,
    FrameError,
    InvalidRequestError,
    PipelineTimeout,
    ProtocolError,
    SessionError,
    StageError,
    Timeout,
)
from cmlp.hostblind import protocol as P
from cmlp.hostblind.client_writer import ClientWriter
from cmlp.hostblind.params import SamplingParams
from cmlp.hostblind.sampling import Sampler, make_rng
from cmlp.hostblind.stage_loop import (
    WATCH_SLICE,
    _begin_params,
    _ClientGone,
    _ids_tensor,
    _LinkLost,
    _RingStageLoop,
    _Stage0Loop,
    _str_or_none,
)
from cmlp.hostblind.stopping import Stopper
from cmlp.transport import Data, SecureChannel, ShutdownMessage, sockets
from cmlp.transport.wire import Tensor

log = logging.getLogger(__name__)

PREFILL, READY, WAITING = "PREFILL", "READY", "WAITING"


def _joined(hidden: Sequence[np.ndarray]) -> np.ndarray:
    """One forward's per-row hidden views [1, T_b, C] as the one tensor [1, sum T_b, C] of
    its StepGroup (copied only when there are several rows)."""
    return hidden[0] if len(hidden) == 1 else np.concatenate(hidden, axis=1)


def _configure_slots(executor, opts) -> int:
    budget = None if opts.kv_budget_mb is None else int(opts.kv_budget_mb) << 20
    return executor.configure_slots(opts.slots, budget)


@dataclass(eq=False)
class _Gen:
    """One generation at stage 0."""

    ch: SecureChannel
    cl: P.Endpoint
    cseq: int
    prompt_ids: list[int]
    params: SamplingParams
    seq: int = 0
    stopper: Stopper | None = None
    rng: object = None
    state: str = PREFILL
    step: int = 0  # the next Step / Token number
    token: int = 0  # the token the next decode row feeds
    begun: bool = False
    sent_at: float = 0.0  # when its Step left (token deadline)
    group: int = -1  # the decode group it went out with (N stages)
    prefilled: int = 0  # prompt tokens already in stage 0's slot


class BatchStage0Loop(_Stage0Loop):
    """Stage 0: admission, the step clock, tokenizer and stop conditions for many clients."""

    def run(self) -> None:
        ex = self.w.executor
        self.n_slots = _configure_slots(ex, self.opts)
        self.single = self.n == 1
        self.next_group = 0
        self.gens: dict[int, _Gen] = {}
        self.admit_q: queue.Queue[_Gen] = queue.Queue()
        self.waiting: deque[_Gen] = deque()
        self.inflight = 0  # admitted + waiting (acceptor threads read it)
        self.inflight_lock = threading.Lock()
        self.stop = threading.Event()
        self.handshakes = threading.BoundedSemaphore(self.n_slots + self.opts.admission_queue + 4)
        self.writer = ClientWriter(self.opts.client_send_timeout)
        acceptor = threading.Thread(target=self._accept_loop, name="hb-batch-accept", daemon=True)
        acceptor.start()
        try:
            self._loop()
        except BaseException as exc:
            self._fail_all(exc)
            raise
        finally:
            self.stop.set()
            acceptor.join(5)
            self._drain_admissions(P.ERR_UNAVAILABLE, "pipeline unavailable: session ended")
            ex.close_all_seqs()
            self.writer.close(timeout=self.opts.client_send_timeout + 1.0)

    # -- acceptor thread: handshakes and requests ------------------------------------
    def _accept_loop(self) -> None:
        while not self.stop.is_set():
            try:
                sock = sockets.accept(self.w.client_listener, timeout=WATCH_SLICE)
            except Timeout:
                continue
            except (OSError, CmlpError):
                return
            if not self.handshakes.acquire(blocking=False):
                sock.close()  # too many half-open clients: drop the newest
                continue
            threading.Thread(target=self._accept_one, args=(sock,), daemon=True, name="hb-client").start()

    def _accept_one(self, sock) -> None:
        cfg = self.w.config
        # as _Stage0Loop.run: an unattested client; stage 0 attests its role where roles bind
        client_cfg = cfg.session.replace(
            expected_measurements=None,
            allow_unattested_peer=True,
            handshake_timeout=self.opts.client_handshake_timeout,
            own_role=None,
            peer_role=None,
        )
        if getattr(cfg, "bind_roles", False):
            from cmlp.attestation.role import Role

            client_cfg = client_cfg.replace(own_role=Role(0, self.w.manifest.pipeline_digest()))
        handed_off = False
        ch = None
        trace.event(self.ev["accept"])
        try:
            ch = SecureChannel.accept(sock, cfg.provider, cfg.verifier, client_cfg)
            trace.event(self.ev["handshake_done"])
            handed_off = self._request(ch)
        except CmlpError as exc:
            log.warning("stage 0: client handshake or request failed: %s", exc)
        except OSError as exc:
            log.warning("stage 0: client connection failed: %s", exc)
        finally:
            self.handshakes.release()
            if not handed_off:
                if ch is not None:
                    ch.close()
                else:
                    sock.close()

    def _request(self, ch: SecureChannel) -> bool:
        """Read one request; answer Info and bad requests here; queue a Generate."""
        cl = P.Endpoint(P.STAGE0)
        msg = ch.recv(timeout=self.opts.request_timeout)
        if not isinstance(msg, Data):
            raise ProtocolError(f"expected a request, got {type(msg).__name__}")
        req = cl.receive(msg.payload)
        if not isinstance(req, (P.Generate, P.Info)):  # the STAGE0 table admits no other
            raise ProtocolError(f"expected a request, got {type(req).__name__}")
        cseq = req.seq
        if isinstance(req, P.Info):
            info = {k: _str_or_none(getattr(self.tok, k, None)) for k in P.INFO_KEYS}
            eos_id = getattr(self.tok, "eos_id", None)
            if info["eos_token"] is None and eos_id is not None:
                info["eos_token"] = _str_or_none(self.tok.decode([eos_id]))
            ch.send(cl.send(P.InfoReply(cseq, info)), timeout=self.opts.client_send_timeout)
            return False
        try:
            prompt_ids, params = self._parse(req.body)
        except InvalidRequestError as exc:
            code = P.ERR_CONTEXT if isinstance(exc, ContextTooLong) else P.ERR_INVALID
            ch.send(cl.send(P.Error(cseq, code, str(exc))), timeout=self.opts.client_send_timeout)
            return False
        with self.inflight_lock:
            full = self.inflight >= self.n_slots + self.opts.admission_queue
            if not full:
                self.inflight += 1
        if full or self.stop.is_set():
            ch.send(
                cl.send(P.Error(cseq, P.ERR_BUSY, "server busy: every slot and queue place is taken")),
                timeout=self.opts.client_send_timeout,
            )
            return False
        try:
            ch.send(cl.send(P.Started(cseq, tuple(prompt_ids))), timeout=self.opts.client_send_timeout)
        except BaseException:
            self._release()
            raise
        self.admit_q.put(_Gen(ch, cl, cseq, list(prompt_ids), params))
        trace.event(self.ev["request"])
        return True

    def _release(self) -> None:
        with self.inflight_lock:
            self.inflight -= 1

    # -- the step loop ------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            self.watch_control()
            self._admit()
            self._poll_clients()
            busy = False
            running = any(g.state != PREFILL for g in self.gens.values())
            short = self._short_prompts(running)
            pre = self._long_prompt(running)
            if pre is not None:  # a long prompt: its next chunk runs alone
                self._prefill(pre)
                busy = True
            ready = [g for g in self.gens.values() if g.state == READY]
            if ready and self._may_send_group():  # short prompts join the decode forward
                self._decode(ready[: self._group_size()], short)
                busy = True
            elif short:
                self._decode([], short)
                busy = True
            if not busy:
                self.writer.flush()  # no forward for the writes to overlap with
            waiting = any(g.state == WAITING for g in self.gens.values())
            if not self.single and waiting:
                self._read_feedback(block=not busy)
                self._check_deadlines()
            elif not busy:
                try:  # idle: wait for a request
                    self.waiting.append(self.admit_q.get(timeout=WATCH_SLICE))
                except queue.Empty:
                    pass
                self._drain_feedback()  # tokens of generations that ended early

    def _admit(self) -> None:
        while True:
            try:
                self.waiting.append(self.admit_q.get_nowait())
            except queue.Empty:
                break
        while self.waiting and self.w.executor.free_slots > 0:
            g = self.waiting.popleft()
            g.seq, self.next_seq = self.next_seq, self.next_seq + 1
            g.stopper = Stopper(self.tok.decode, g.params, self.eos_ids, context_ids=g.prompt_ids)
            g.rng = make_rng(g.params.seed) if self.single else None
            self.w.executor.open_seq(g.seq)
            self.gens[g.seq] = g
            if not self.single:
                p = g.params
                self.send_out(
                    self.down.send(P.Begin(g.seq, float(p.temperature), float(p.top_p), p.top_k, p.seed))
                )
                g.begun = True

    def _may_send_group(self) -> bool:
        """With N stages at most ``micro_batches`` (default N) decode groups are on the ring:
        a sequence that becomes ready while they are all out (a new one, or part of a group
        whose other tokens are still coming back) waits and joins the next group, so groups
        do not split into ever smaller forwards."""
        if self.single:
            return True
        out = {g.group for g in self.gens.values() if g.state == WAITING and g.group >= 0}
        return len(out) < (self.opts.micro_batches or self.n)

    def _group_size(self) -> int:
        """Rows per decode forward: the decoding sequences split into ``micro_batches``
        groups (default: one per stage), so while stage i runs one group stage 0 runs the
        next; the groups stay apart because each comes back as a unit."""
        groups = self.opts.micro_batches or self.n
        decoding = sum(1 for g in self.gens.values() if g.state != PREFILL)
        return max(1, -(-decoding // groups))

    def _poll_clients(self) -> None:
        for seq in self.writer.gone():  # a write to its client failed
            g = self.gens.get(seq)
            if g is not None:
                log.info("stage 0: generation %d ended early: its client channel failed", seq)
                self._end(g)
        for g in list(self.gens.values()):
            try:
                if g.ch.pending():
                    self._watch_client(g.ch, g.cl)
            except _ClientGone as gone:
                log.info("stage 0: generation %d ended early: %s", g.seq, gone)
                self._end(g)
            except (OSError, ValueError) as exc:
                # the writer thread closed this channel when a write failed, between
                # pending()'s closed check and its select: the write's report comes next step
                log.info("stage 0: generation %d ended early: client channel closed (%s)", g.seq, exc)
                self._end(g)

    def _prefill(self, g: _Gen) -> None:
        """The next chunk of one prompt (``prefill_chunk`` tokens): a long prompt costs the
        running streams one chunk per step, not its whole prefill.  With N stages each chunk's
        hidden states go on at once, as a Chunk (run, not sampled) and the last one as Step 0,
        so every stage prefills chunk by chunk between its decode steps."""
        ex = self.w.executor
        P_len = len(g.prompt_ids)
        chunk = g.prompt_ids[g.prefilled : g.prefilled + max(1, self.opts.prefill_chunk)]
        end = g.prefilled + len(chunk)
        if end == P_len and g.prefilled == 0:
            self._forward([g], [_ids_tensor(chunk)])  # one chunk: the common path
            return
        try:
            row = _ids_tensor(chunk)
            ex.check_row(g.seq, 0, end, row)
            self.writer.flush()  # the clients' writes overlap the forward
            out = ex.forward_rows([g.seq], [row])
        except CmlpError as exc:
            self._fail(g, P.ERR_INTERNAL, f"generation failed: {exc}")
            return
        g.prefilled = end
        if end < P_len:
            if not self.single:
                self.send_out(self.down.send(P.Chunk(g.seq, end, 1)), [ex.hidden_tensor(out[0])])
            return  # more chunks in the next steps
        trace.event(self.ev["forward_done"])
        if self.single:
            try:
                token = self._sample_row(out[0], g.params, g.rng)
            except CmlpError as exc:
                self._fail(g, P.ERR_INTERNAL, f"generation failed: {exc}")
                return
            self._emit(g, token)
            return
        self.send_out(self.down.send(P.Step(g.seq, 0, P_len, 1)), [ex.hidden_tensor(out[0])])
        g.state = WAITING
        g.sent_at = time.monotonic()

    def _mix_limit(self, running: bool) -> int:
        """The longest prompt that shares a forward: ``mix_rows`` (those rows are computed
        exactly as if alone), and while streams are ``running`` (decoding) no more than the
        per-step prompt budget ``prefill_chunk`` (a longer one is chunked instead)."""
        limit = self.w.executor.mix_rows
        return min(limit, max(1, self.opts.prefill_chunk)) if running else limit

    def _long_prompt(self, running: bool) -> _Gen | None:
        """The first prompt too long to share a forward, or already part way through its
        chunks: its next chunk runs alone.  A short prompt left out by this step's budget is
        not one: it waits for the next step's forward instead of running in an extra one."""
        limit = self._mix_limit(running)
        for g in self.gens.values():
            if g.state == PREFILL and (g.prefilled or len(g.prompt_ids) > limit):
                return g
        return None

    def _short_prompts(self, running: bool) -> list[_Gen]:
        """Waiting prompts that share this step's forward with the decode rows (in arrival
        order): each at most ``_mix_limit(running)`` tokens, together at most ``prefill_chunk``
        tokens (the per-step prompt budget, which keeps running streams from stalling; with
        none running, every short prompt goes)."""
        limit = self._mix_limit(running)
        budget = max(1, self.opts.prefill_chunk) if running else limit * len(self.gens)
        out = []
        for g in self.gens.values():
            n = len(g.prompt_ids)
            if g.state != PREFILL or g.prefilled or n > limit:
                continue
            if n > budget:
                break
            budget -= n
            out.append(g)
        return out

    def _decode(self, gens: list[_Gen], prompts: Sequence[_Gen] = ()) -> None:
        """One forward: the decode rows of ``gens`` and the whole of each short prompt."""
        for g in prompts:
            g.prefilled = len(g.prompt_ids)
        rows = [_ids_tensor((g.token,)) for g in gens] + [_ids_tensor(g.prompt_ids) for g in prompts]
        self._forward(list(gens) + list(prompts), rows, group=bool(gens))

    def _forward(self, gens: list[_Gen], rows: list[Tensor], group: bool = True) -> None:
        """Run rows (decode rows, prompts) as one forward; sample (one stage) or send them on
        as one group (``group``: a decode group, counted by _may_send_group; prompts alone
        are not)."""
        ex = self.w.executor
        ok_gens, ok_rows = [], []
        for g, row in zip(gens, rows, strict=True):
            seq_len = len(g.prompt_ids) + g.step
            try:
                if seq_len > self.activation.max_seq_len:
                    raise ProtocolError(
                        f"seq_len {seq_len} exceeds max_seq_len {self.activation.max_seq_len}"
                    )
                ex.check_row(g.seq, g.step, seq_len, row)
            except CmlpError as exc:
                self._fail(g, P.ERR_INTERNAL, f"generation failed: {exc}")
                continue
            ok_gens.append(g)
            ok_rows.append(row)
        if not ok_gens:
            return
        self.writer.flush()  # the clients' writes overlap the forward
        trace.event(self.ev["forward_start"])
        try:
            out = ex.forward_rows([g.seq for g in ok_gens], ok_rows)
        except CmlpError as exc:
            for g in ok_gens:
                self._fail(g, P.ERR_INTERNAL, f"generation failed: {exc}")
            return
        trace.event(self.ev["forward_done"])
        if self.single:
            for r, g in enumerate(ok_gens):
                try:
                    token = self._sample_row(out[r], g.params, g.rng)
                except CmlpError as exc:
                    self._fail(g, P.ERR_INTERNAL, f"generation failed: {exc}")
                    continue
                self._emit(g, token)
            return
        now = time.monotonic()
        group_id = -1
        if group:
            group_id, self.next_group = self.next_group, self.next_group + 1
        group_rows = tuple(
            P.StepRow(g.seq, g.step, len(g.prompt_ids) + g.step, int(row.shape[1]))
            for g, row in zip(ok_gens, ok_rows, strict=True)
        )
        # the forward's rows go on as one message and one tensor (the group stays one forward)
        self.send_out(self.down.send(P.StepGroup(group_rows)), [ex.hidden_tensor(_joined(out))])
        for g in ok_gens:
            g.state = WAITING
            g.sent_at = now
            g.group = group_id
        trace.event(self.ev["sent"])

    def _sample_row(self, logits: np.ndarray, params: SamplingParams, rng) -> int:
        if self.sampler is None or self.sampler.vocab_size != logits.shape[0]:
            self.sampler = Sampler(logits.shape[0])
        return self.sampler.sample(logits, params, rng)

    def _emit(self, g: _Gen, token: int) -> None:
        """A sampled token: stream it, then finish or make the sequence ready again."""
        trace.event(self.ev["token_in"])
        stopper = g.stopper
        assert stopper is not None, "set when the generation is admitted"
        text, reason = stopper.push(token)
        out = [g.cl.send(P.Token(g.cseq, g.step, token, text))]
        if reason is not None:
            out.append(g.cl.send(P.Finished(g.cseq, reason, len(g.prompt_ids), stopper.completion_tokens)))
        self.writer.send(g.seq, g.ch, out)  # written while the next forward runs
        trace.event(self.ev["token_out"])
        if reason is not None:
            self._end(g)
            return
        g.step += 1
        g.token = token
        g.state = READY

    def _read_feedback(self, block: bool) -> None:
        """Every Sampled already here; with ``block``, wait a watch slice for the first."""
        first = True
        link = self.data_in
        assert link is not None, "a one-stage pipeline samples itself, it has no feedback link"
        while True:
            if not (first and block) and not link.pending():
                return
            try:
                msg = link.recv(timeout=WATCH_SLICE if first and block else 1.0)
            except Timeout:
                return
            except (SessionError, CryptoError, FrameError) as exc:
                raise _LinkLost(self.link_name("in"), exc) from exc
            first = False
            if not isinstance(msg, Data):
                raise _LinkLost(
                    self.link_name("in"),
                    ProtocolError(f"unexpected {type(msg).__name__} on the feedback link"),
                )
            if self.feedback.is_stale(msg.payload):
                continue
            try:
                ev = self.feedback.receive(msg.payload)
            except ProtocolError as exc:
                raise _LinkLost(self.link_name("in"), exc) from exc
            if isinstance(ev, P.Fail):
                g = self.gens.get(ev.seq)
                if g is not None:
                    self._fail(g, P.ERR_INTERNAL, f"generation failed: {ev.message}")
                continue
            if isinstance(ev, P.SampledGroup):
                rows: tuple[P.Sampled, ...] = ev.rows  # rows of ended sequences are skipped
            elif isinstance(ev, P.Sampled):
                rows = (ev,)
            else:  # e.g. an End: the table admits it, a token it is not
                raise _LinkLost(
                    self.link_name("in"),
                    ProtocolError(f"unexpected {type(ev).__name__} on the feedback link"),
                )
            for row in rows:
                g = self.gens.get(row.seq)
                if g is None or g.state != WAITING or row.step != g.step:
                    raise ProtocolError(
                        f"feedback for sequence {row.seq} step {row.step} that was not asked for"
                    )
                self._emit(g, row.token_id)

    def _check_deadlines(self) -> None:
        now = time.monotonic()
        for g in self.gens.values():
            if g.state == WAITING and now - g.sent_at > self.opts.token_timeout:
                raise PipelineTimeout(f"no token from stage {self.n - 1} within {self.opts.token_timeout} s")

    # -- ending generations ---------------------------------------------------------
    def _end(self, g: _Gen) -> None:
        """Free everything the generation holds, at once."""
        if self.gens.pop(g.seq, None) is None:
            return
        self.w.executor.close_seq(g.seq)
        if g.begun and self.down.state(g.seq) == P.ACTIVE:
            self.send_out(self.down.send(P.End(g.seq)))
        self.feedback.forget(g.seq)
        self.writer.send(g.seq, g.ch, [], close=True)  # after its queued messages
        self._release()

    def _queue_error(self, g: _Gen, code: int, text: str) -> None:
        """An Error for g's client, after what is already queued for it."""
        if g.cl.state(g.cseq) in (P.WAIT_START, P.STREAMING):
            self.writer.send(g.seq, g.ch, [g.cl.send(P.Error(g.cseq, code, text))])

    def _fail(self, g: _Gen, code: int, text: str) -> None:
        log.warning("stage 0: sequence %d failed: %s", g.seq, text)
        self._queue_error(g, code, text)
        self._end(g)

    def _fail_all(self, exc: BaseException) -> None:
        if isinstance(exc, _LinkLost):
            code, text = P.ERR_UNAVAILABLE, f"pipeline unavailable: {exc.what} failed: {exc.exc}"
        elif isinstance(exc, PipelineTimeout):
            code, text = P.ERR_UNAVAILABLE, f"pipeline unavailable: {exc}"
        else:
            code, text = P.ERR_UNAVAILABLE, f"pipeline unavailable: {exc or type(exc).__name__}"
        for g in list(self.gens.values()):
            self._queue_error(g, code, text)
            self.gens.pop(g.seq, None)
            try:
                self.w.executor.close_seq(g.seq)
            except CmlpError:
                pass
            self.writer.send(g.seq, g.ch, [], close=True)
            self._release()
        self._drain_admissions(code, text)

    def _drain_admissions(self, code: int, text: str) -> None:
        while True:
            try:
                self.waiting.append(self.admit_q.get_nowait())
            except queue.Empty:
                break
        while self.waiting:
            g = self.waiting.popleft()
            self._client_error(g.ch, g.cl, g.cseq, code, text)
            g.ch.close()
            self._release()


class BatchRingLoop(_RingStageLoop):
    """Stage i > 0: every decode row already buffered (StepGroups, short Steps) runs as one forward."""

    def start(self) -> None:
        """Fresh slots and link states for a session."""
        self.cap = _configure_slots(self.w.executor, self.opts)
        self.up = P.Endpoint(P.DOWNSTREAM)
        self.down = P.Endpoint(P.UPSTREAM, sampled_link=self.is_last)
        self.params: dict[int, tuple[SamplingParams, object]] = {}

    def run(self) -> None:
        ex = self.w.executor
        self.start()
        link = self.data_in
        assert link is not None, "a ring stage always has its data_in"
        try:
            while True:
                batch: list[tuple[int, int, int, Tensor]] = []
                self._handle(self.recv_in(0, idle_ok=True), batch)
                # whatever else is already here joins the forward (a group is one message)
                while len(batch) < self.cap and link.pending():
                    self._handle(self._recv(), batch)
                self._flush(batch)
                self.watch_control()  # a busy link never idles: answer Pings here
        finally:
            ex.close_all_seqs()

    def _recv(self):
        try:
            return self.recv_in(self.opts.input_timeout)
        except Timeout:
            raise _LinkLost(
                self.link_name("in"),
                PipelineTimeout(f"a message did not arrive within {self.opts.input_timeout} s"),
            ) from None

    def _handle(self, msg, batch) -> None:
        if isinstance(msg, ShutdownMessage):
            raise _LinkLost(self.link_name("in"), ProtocolError("transport Shutdown"))
        if not isinstance(msg, Data):
            raise ProtocolError(f"expected a Data message on data_in, got {type(msg).__name__}")
        ev = self.up.receive(msg.payload)
        ex = self.w.executor
        if isinstance(ev, P.Begin):
            try:
                params = _begin_params(ev) if self.is_last else None
                ex.open_seq(ev.seq)
            except CmlpError as exc:
                self.send_out(self.down.send(P.Fail(ev.seq, f"stage {self.idx}: {exc}")))
                self.up.forget(ev.seq)
                return
            if params is not None:  # the last stage samples
                self.params[ev.seq] = (params, make_rng(ev.seed))
            else:
                self.send_out(self.down.send(ev))
        elif isinstance(ev, P.StepGroup):
            (t,) = self._read_tensors(1)
            trace.event(self.ev["input"])
            rows = self._split_group(ev, t)
            if len(rows) == 1 and rows[0][3].shape[1] > ex.mix_rows:  # a long prefill runs alone
                self._flush(batch)
                self._flush(rows)
            else:
                batch.extend(rows)
        elif isinstance(ev, (P.Step, P.Chunk)):
            tensors = self._read_tensors(ev.tensors)
            trace.event(self.ev["input"])
            step = ev.step if isinstance(ev, P.Step) else 0
            try:
                if len(tensors) != 1:
                    raise ProtocolError(f"a batched Step carries one tensor, got {len(tensors)}")
                t = tensors[0]
                # own the bytes: the next receive may reuse the buffer this view points into
                row = self._checked_row(
                    ev.seq, step, ev.seq_len, Tensor(t.name, t.dtype, t.shape, np.array(t.data))
                )
            except CmlpError as exc:
                self._fail_seq(ev.seq, exc)
                return
            if row is None:
                return  # this stage already failed the sequence
            if isinstance(ev, P.Chunk):  # a prompt chunk: run alone, pass on, never sampled
                self._flush(batch)
                self._chunk(ev, row)
            elif row.shape[1] > ex.mix_rows:  # a long prompt's last chunk (Step 0) runs alone
                self._flush(batch)
                self._flush([(ev.seq, ev.step, ev.seq_len, row)])
            else:
                batch.append((ev.seq, ev.step, ev.seq_len, row))
        elif isinstance(ev, (P.End, P.Fail)):
            if any(b[0] == ev.seq for b in batch):
                self._flush(batch)  # its last Step first, then the slot goes
            self.params.pop(ev.seq, None)
            ex.close_seq(ev.seq)
            if self.is_last and isinstance(ev, P.End):
                self.down.forget(ev.seq)
            elif self.down.state(ev.seq) != P.DONE:
                self.send_out(self.down.send(ev))
        else:
            raise ProtocolError(f"unexpected message 0x{ev.type:02x} on data_in")

    def _checked_row(self, seq: int, step: int, seq_len: int, row: Tensor) -> Tensor | None:
        """``row`` once its shape and cache position check out; None if this stage already
        failed the sequence (its rows are dropped)."""
        if self.down.state(seq) == P.DONE:
            return None
        if seq_len > self.activation.max_seq_len:
            raise ProtocolError(f"seq_len {seq_len} exceeds max_seq_len {self.activation.max_seq_len}")
        self.w.executor.check_row(seq, step, seq_len, row)
        return row

    def _split_group(self, ev: P.StepGroup, t: Tensor) -> list[tuple[int, int, int, Tensor]]:
        """A StepGroup's tensor [1, sum(tokens), C] cut into its rows (views of one owned
        copy), each checked; a row that fails fails its sequence only, a tensor that does not
        match the rows fails them all."""
        total = sum(r.tokens for r in ev.rows)
        if len(t.shape) != 3 or t.shape[0] != 1 or t.shape[1] != total:
            exc = ProtocolError(f"a StepGroup of {total} positions came with a tensor {list(t.shape)}")
            for r in ev.rows:
                self._fail_seq(r.seq, exc)
            return []
        data = np.array(t.data)  # own the bytes: the next receive may reuse the buffer
        out, off = [], 0
        mix = self.w.executor.mix_rows if len(ev.rows) > 1 else None  # a long prompt runs alone
        for r in ev.rows:
            view = data[:, off : off + r.tokens]
            off += r.tokens
            try:
                if mix is not None and r.tokens > mix:
                    raise ProtocolError(f"a StepGroup mixes in a prompt row longer than {mix} tokens")
                row = self._checked_row(r.seq, r.step, r.seq_len, Tensor(t.name, t.dtype, view.shape, view))
            except CmlpError as exc:
                self._fail_seq(r.seq, exc)
                continue
            if row is not None:
                out.append((r.seq, r.step, r.seq_len, row))
        return out

    def _chunk(self, ev: P.Chunk, row: Tensor) -> None:
        ex = self.w.executor
        try:
            out = ex.forward_rows([ev.seq], [row])
        except (StageError, CmlpError) as exc:
            if isinstance(exc, (SessionError, CryptoError)):
                raise
            self._fail_seq(ev.seq, exc)
            return
        if not self.is_last:
            self.send_out(self.down.send(P.Chunk(ev.seq, ev.seq_len, 1)), [ex.hidden_tensor(out[0])])

    def _fail_seq(self, seq: int, exc: BaseException) -> None:
        log.warning("stage %d: sequence %d failed: %s", self.idx, seq, exc)
        self.params.pop(seq, None)
        self.w.executor.close_seq(seq)
        if self.down.state(seq) != P.DONE:
            self.send_out(self.down.send(P.Fail(seq, f"stage {self.idx}: {exc}")))

    def _flush(self, batch) -> None:
        if not batch:
            return
        rows = list(batch)
        batch.clear()
        trace.event(self.ev["forward_start"])
        try:
            out = self.w.executor.forward_rows([b[0] for b in rows], [b[3] for b in rows])
        except (StageError, CmlpError) as exc:
            if isinstance(exc, (SessionError, CryptoError)):
                raise
            for seq, *_ in rows:
                self._fail_seq(seq, exc)
            return
        trace.event(self.ev["forward_done"])
        if not self.is_last:  # the forward's rows go on as one message and one tensor
            group = P.StepGroup(tuple(P.StepRow(q, st, n, int(row.shape[1])) for q, st, n, row in rows))
            self.send_out(self.down.send(group), [self.w.executor.hidden_tensor(_joined(out))])
            trace.event(self.ev["sent"])
            return
        sampled = []
        for r, (seq, step, _, _) in enumerate(rows):
            try:
                if seq not in self.params:
                    raise ProtocolError(f"Step for sequence {seq} without Begin")
                params, rng = self.params[seq]
                token = self._sample_row(out[r], params, rng)
            except CmlpError as exc:
                self._fail_seq(seq, exc)  # its Fail goes ahead of the group: rows are independent
                continue
            sampled.append(P.Sampled(seq, step, token))
        if sampled:
            self.send_out(self.down.send(P.SampledGroup(tuple(sampled))))
        trace.event(self.ev["sent"])

    def _sample_row(self, logits: np.ndarray, params: SamplingParams, rng) -> int:
        if self.sampler is None or self.sampler.vocab_size != logits.shape[0]:
            self.sampler = Sampler(logits.shape[0])
        return self.sampler.sample(logits, params, rng)
