"""The stages' request loops in host-blind mode (docs/host-blind.md).

Stage 0 takes one client channel at a time (the host forwards its
ciphertext), tokenizes the prompt, runs its layers and sends each step
down the ring; the last stage samples and sends the token id back over the
feedback link; stage 0 decodes it, checks the stop conditions and streams it
to the client.  With one stage, stage 0 samples itself.  The control channel
from the host carries only Ping and Shutdown once the session is running.

Every stage keeps watching the control channel while it waits; every wait
on a peer has a deadline; a broken data link ends the session (the host
notices and starts a new one with persistent stages).  A client that goes
away or misbehaves only ends its own generation.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Protocol, Sequence, Tuple, Type

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
from cmlp.hostblind.params import MAX_PROMPT_BYTES, MAX_PROMPT_IDS, SamplingParams
from cmlp.hostblind.sampling import Sampler, make_rng
from cmlp.hostblind.stopping import Stopper
from cmlp.pipeline import control as C
from cmlp.pipeline.gpt2 import cache_clear_sentinel
from cmlp.transport import Data, SecureChannel, ShutdownMessage, TensorMessage, sockets
from cmlp.transport.wire import DType, Tensor

log = logging.getLogger(__name__)

WATCH_SLICE = 0.05  # seconds between control checks while waiting


class StageTokenizer(Protocol):
    """What stage 0 needs of a tokenizer (cmlp.tokenizer.Tokenizer; tests pass small fakes).

    Optional, read with getattr: eos_id, eos_ids, vocab_size and the INFO_KEYS strings.
    """

    def encode(self, text: str) -> List[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


@dataclass
class HostBlindOptions:
    tokenizer: Optional[StageTokenizer] = None  # default: the model dir's or GPT-2
    eos_ids: Optional[Tuple[int, ...]] = None  # override the tokenizer's EOS ids
    client_handshake_timeout: float = 5.0
    request_timeout: float = 10.0  # the Generate after the client's handshake
    token_timeout: float = 60.0  # one token from the feedback link
    client_send_timeout: float = 5.0
    input_timeout: float = 60.0  # the tensors that follow a Step
    slots: int = 8  # KV-cache slots per stage (docs/batching.md)
    kv_budget_mb: Optional[int] = None  # cap on the slots' reserved KV bytes
    admission_queue: int = 8  # requests waiting for a slot at stage 0, then busy
    prefill_chunk: int = 64  # prompt tokens per step at stage 0 (chunked prefill)
    micro_batches: int = 0  # decode groups in flight (0: one per stage)


class _LinkLost(Exception):
    def __init__(self, what: str, exc: BaseException):
        super().__init__(f"{what}: {exc}")
        self.what = what
        self.exc = exc


class _ClientGone(Exception):
    """The client cancelled or its channel failed: end this generation only."""


class _SessionOver(Exception):
    """The host said Shutdown."""


def load_stage0_tokenizer(model_dir: Optional[Path]):
    """The model directory's tokenizer if it has one, else the embedded GPT-2 one.

    Uses ``cmlp.tokenizer.load_model_tokenizer`` (EOS ids, special tokens and chat template
    from the model directory) where the models branch provides it.
    """
    from cmlp import tokenizer as T

    if model_dir is not None and (Path(model_dir) / "tokenizer.json").is_file():
        loader = getattr(T, "load_model_tokenizer", None)
        if loader is not None:
            return loader(Path(model_dir))
        return T.load_tokenizer(Path(model_dir) / "tokenizer.json")
    return T.load_tokenizer(None)


def run_host_blind(worker, ctl, data_in, data_out, activation) -> None:
    from cmlp.pipeline.stage import SessionEnded

    opts = worker.config.hostblind or HostBlindOptions()
    if getattr(worker.executor, "supports_slots", False):  # continuous batching (docs/batching.md)
        from cmlp.hostblind.batch_loop import BatchRingLoop, BatchStage0Loop

        kinds: Tuple[Type[_Stage0Loop], Type[_RingStageLoop]] = (BatchStage0Loop, BatchRingLoop)
    else:
        kinds = (_Stage0Loop, _RingStageLoop)
    loop = kinds[worker.idx != 0](worker, ctl, data_in, data_out, activation, opts)
    try:
        loop.run()
    except _SessionOver:
        ctl.send(C.ShuttingDown(worker.idx))
        raise SessionEnded() from None
    except _LinkLost as lost:
        raise lost.exc from None


class _Base:
    def __init__(
        self,
        worker,
        ctl,
        data_in: Optional[SecureChannel],
        data_out: Optional[SecureChannel],
        activation,
        opts: HostBlindOptions,
    ):
        self.w = worker
        self.idx = worker.idx
        self.n = worker.manifest.num_stages
        self.is_last = self.idx == self.n - 1
        self.ctl = ctl
        self.data_in = data_in
        self.data_out = data_out
        self.activation = activation
        self.opts = opts
        self.sampler: Optional[Sampler] = None
        self.ev = {
            k: f"hb.stage{self.idx}.{k}"
            for k in (
                "accept",
                "handshake_done",
                "request",
                "input",
                "forward_start",
                "forward_done",
                "sent",
                "sampled",
                "token_in",
                "token_out",
            )
        }

    # -- control channel ----------------------------------------------------------------
    def watch_control(self) -> None:
        while self.ctl.channel.pending():
            try:
                msg = self.ctl.recv(timeout=1.0)
            except Timeout:
                return  # a partial frame: keep it for later
            if isinstance(msg, C.Ping):
                self.ctl.send(C.Pong(msg.seq))
            elif isinstance(msg, C.Shutdown):
                raise _SessionOver()
            else:
                raise ProtocolError(f"unexpected control message in host-blind mode: {C.describe(msg)}")

    # -- data links ---------------------------------------------------------------------
    def link_name(self, side: str) -> str:
        if side == "in":
            peer = (self.idx - 1) % self.n
            kind = "feedback link" if self.idx == 0 else "data link"
            return f"the {kind} from stage {peer}"
        peer = (self.idx + 1) % self.n
        kind = "feedback link" if self.is_last else "data link"
        return f"the {kind} to stage {peer}"

    def recv_in(self, timeout: float, idle_ok: bool = False):
        """One message from data_in, watching control while waiting."""
        deadline = time.monotonic() + timeout
        link = self.data_in
        assert link is not None, "only a one-stage pipeline has no links, and it never waits"
        while True:
            try:
                return link.recv(timeout=WATCH_SLICE)
            except Timeout:
                self.watch_control()
                if not idle_ok and time.monotonic() > deadline:
                    raise
            except (SessionError, CryptoError, FrameError) as exc:
                raise _LinkLost(self.link_name("in"), exc) from exc

    def send_out(self, payload: bytes, tensors: Sequence[Tensor] = ()) -> None:
        """One message and its tensors downstream, written in one syscall."""
        link = self.data_out
        assert link is not None, "only a one-stage pipeline has no links, and it never sends"
        try:
            if tensors:
                link.send(payload, more=True)
                for i, t in enumerate(tensors):
                    link.send_tensor(t, more=i + 1 < len(tensors))
            else:
                link.send(payload)
        except (SessionError, CryptoError) as exc:
            raise _LinkLost(self.link_name("out"), exc) from exc

    def forward(self, seq: int, step: int, seq_len: int, inputs: List[Tensor]) -> List[Tensor]:
        """One step through the executor; ``seq_len`` lets it check its cache position."""
        if seq_len > self.activation.max_seq_len:
            raise ProtocolError(f"seq_len {seq_len} exceeds max_seq_len {self.activation.max_seq_len}")
        begin = getattr(self.w.executor, "begin_request", None)
        if begin is not None:
            begin(seq, seq_len, 1)  # each step is one single-micro-batch request
        return self.w.executor.forward(seq, step, inputs)

    def sample(self, outputs: List[Tensor], params: SamplingParams, rng) -> int:
        logits = outputs[-1].data
        if logits.dtype != np.float32 or logits.ndim != 2 or logits.shape[0] < 1:
            raise ProtocolError(
                f"the last stage's output is not F32 logits [B, vocab]: {logits.dtype} {logits.shape}"
            )
        row = logits[-1]
        if self.sampler is None or self.sampler.vocab_size != row.shape[0]:
            self.sampler = Sampler(row.shape[0])
        return self.sampler.sample(row, params, rng)


def _str_or_none(value) -> Optional[str]:
    return value if isinstance(value, str) else None


def _ids_tensor(ids: Sequence[int]) -> Tensor:
    arr = np.asarray([ids], dtype=np.uint32)  # [1, T]
    return Tensor("input_ids", DType.U32, arr.shape, arr)


def _begin_params(ev: P.Begin) -> SamplingParams:
    return SamplingParams(
        max_tokens=1, temperature=ev.temperature, top_k=ev.top_k, top_p=ev.top_p, seed=ev.seed
    ).validate()


class _RingStageLoop(_Base):
    """Stage i > 0: forward steps down the ring; the last stage samples and feeds back."""

    def run(self) -> None:
        up = P.Endpoint(P.DOWNSTREAM)
        down = P.Endpoint(P.UPSTREAM, sampled_link=self.is_last)
        seqs: Dict[int, Tuple[SamplingParams, object]] = {}
        while True:
            msg = self.recv_in(0, idle_ok=True)
            if isinstance(msg, ShutdownMessage):
                raise _LinkLost(self.link_name("in"), ProtocolError("transport Shutdown"))
            if not isinstance(msg, Data):
                raise ProtocolError(f"expected a Data message on data_in, got {type(msg).__name__}")
            ev = up.receive(msg.payload)
            if isinstance(ev, P.Begin):
                if self.is_last:
                    try:
                        seqs[ev.seq] = (_begin_params(ev), make_rng(ev.seed))
                    except InvalidRequestError as exc:
                        self.send_out(down.send(P.Fail(ev.seq, f"stage {self.idx}: {exc}")))
                        up.forget(ev.seq)
                else:
                    self.send_out(down.send(ev))
            elif isinstance(ev, P.Step):
                tensors = self._read_tensors(ev.tensors)
                trace.event(self.ev["input"])
                if down.state(ev.seq) == P.DONE:
                    continue  # this stage already failed the sequence
                try:
                    outputs = self.forward(ev.seq, ev.step, ev.seq_len, tensors)
                    trace.event(self.ev["forward_done"])
                    if self.is_last:
                        if ev.seq not in seqs:
                            raise ProtocolError(f"Step for sequence {ev.seq} without Begin")
                        params, rng = seqs[ev.seq]
                        token = self.sample(outputs, params, rng)
                        trace.event(self.ev["sampled"])
                        self.send_out(down.send(P.Sampled(ev.seq, ev.step, token)))
                    else:
                        self.send_out(down.send(P.Step(ev.seq, ev.step, ev.seq_len, len(outputs))), outputs)
                        for t in outputs:
                            t.wipe_metadata()
                    trace.event(self.ev["sent"])
                except (StageError, CmlpError) as exc:
                    if isinstance(exc, (SessionError, CryptoError)):
                        raise
                    log.warning("stage %d: sequence %d failed: %s", self.idx, ev.seq, exc)
                    seqs.pop(ev.seq, None)
                    self.send_out(down.send(P.Fail(ev.seq, f"stage {self.idx}: {exc}")))
            elif isinstance(ev, P.End):
                seqs.pop(ev.seq, None)
                if self.is_last:
                    down.forget(ev.seq)
                elif down.state(ev.seq) != P.DONE:
                    self.send_out(down.send(ev))
            elif isinstance(ev, P.Fail):
                seqs.pop(ev.seq, None)
                if down.state(ev.seq) != P.DONE:
                    self.send_out(down.send(ev))
            else:
                raise ProtocolError(f"unexpected message 0x{ev.type:02x} on data_in")

    def _read_tensors(self, count: int) -> List[Tensor]:
        tensors = []
        for _ in range(count):
            try:
                msg = self.recv_in(self.opts.input_timeout)
            except Timeout:
                raise _LinkLost(
                    self.link_name("in"),
                    PipelineTimeout(f"a Step's tensors did not arrive within {self.opts.input_timeout} s"),
                ) from None
            if not isinstance(msg, TensorMessage):
                raise ProtocolError(f"expected a Tensor after Step, got {type(msg).__name__}")
            tensors.append(msg.tensor)
        return tensors


class _Stage0Loop(_Base):
    """Stage 0: client channels, tokenizer, stop conditions; the head of the ring."""

    def __init__(self, *args):
        super().__init__(*args)
        tok = self.opts.tokenizer or getattr(self.w, "hb_tokenizer", None)
        if tok is None:  # loaded once per worker, not per session
            tok = self.w.hb_tokenizer = load_stage0_tokenizer(getattr(self.w.executor, "model_dir", None))
        self.tok: StageTokenizer = tok
        eos = self.opts.eos_ids
        if eos is None:
            eos = tuple(getattr(self.tok, "eos_ids", None) or ())
            eos_id = getattr(self.tok, "eos_id", None)
            if not eos and eos_id is not None:
                eos = (eos_id,)
        self.eos_ids = tuple(eos)
        self.down = P.Endpoint(P.UPSTREAM)
        self.feedback = P.Endpoint(P.DOWNSTREAM, sampled_link=True)
        self.next_seq = 1

    def run(self) -> None:
        cfg = self.w.config
        client_cfg = cfg.session.replace(
            expected_measurements=None,
            allow_unattested_peer=True,
            handshake_timeout=self.opts.client_handshake_timeout,
            own_role=None,
            peer_role=None,
        )
        if getattr(cfg, "bind_roles", False):
            # stage 0 attests its role, so the host cannot hand the client another stage
            from cmlp.attestation.role import Role

            client_cfg = client_cfg.replace(own_role=Role(0, self.w.manifest.pipeline_digest()))
        while True:
            self.watch_control()
            self._drain_feedback()
            try:
                sock = sockets.accept(self.w.client_listener, timeout=WATCH_SLICE)
            except Timeout:
                continue
            try:
                channel = SecureChannel.accept(sock, cfg.provider, cfg.verifier, client_cfg)
            except CmlpError as exc:
                log.warning("stage 0: client handshake failed: %s", exc)
                continue
            try:
                self.serve_client(channel)
            finally:
                channel.close()

    def _drain_feedback(self) -> None:
        """Skip tokens of generations that ended early (a cancelled client, say)."""
        while self.data_in is not None and self.data_in.pending():
            try:
                msg = self.data_in.recv(timeout=0.5)
            except Timeout:
                return
            except (SessionError, CryptoError, FrameError) as exc:
                raise _LinkLost(self.link_name("in"), exc) from exc
            if not isinstance(msg, Data) or not self.feedback.is_stale(msg.payload):
                raise ProtocolError("unexpected message on the feedback link while idle")

    # -- one client ---------------------------------------------------------------------
    def serve_client(self, ch: SecureChannel) -> None:
        cl = P.Endpoint(P.STAGE0)
        try:
            msg = ch.recv(timeout=self.opts.request_timeout)
            if not isinstance(msg, Data):
                raise ProtocolError(f"expected a request, got {type(msg).__name__}")
            req = cl.receive(msg.payload)
            if not isinstance(req, (P.Generate, P.Info)):  # the STAGE0 table admits no other
                raise ProtocolError(f"expected a request, got {type(req).__name__}")
        except (CmlpError, OSError) as exc:
            log.warning("stage 0: no valid request from the client: %s", exc)
            return
        cseq = req.seq
        if isinstance(req, P.Info):
            info = {k: _str_or_none(getattr(self.tok, k, None)) for k in P.INFO_KEYS}
            eos_id = getattr(self.tok, "eos_id", None)
            if info["eos_token"] is None and eos_id is not None:
                info["eos_token"] = _str_or_none(self.tok.decode([eos_id]))
            try:
                self._to_client(ch, cl.send(P.InfoReply(cseq, info)))
            except _ClientGone:
                pass
            return
        try:
            prompt_ids, params = self._parse(req.body)
        except InvalidRequestError as exc:
            code = P.ERR_CONTEXT if isinstance(exc, ContextTooLong) else P.ERR_INVALID
            self._to_client(ch, cl.send(P.Error(cseq, code, str(exc))))
            return
        self._to_client(ch, cl.send(P.Started(cseq, tuple(prompt_ids))))
        seq, self.next_seq = self.next_seq, self.next_seq + 1
        try:
            self._generate(ch, cl, cseq, seq, prompt_ids, params)
        except _ClientGone as gone:
            log.info("stage 0: generation %d ended early: %s", seq, gone)
        except _LinkLost as lost:
            self._client_error(
                ch, cl, cseq, P.ERR_UNAVAILABLE, f"pipeline unavailable: {lost.what} failed: {lost.exc}"
            )
            raise
        except PipelineTimeout as exc:
            self._client_error(ch, cl, cseq, P.ERR_UNAVAILABLE, f"pipeline unavailable: {exc}")
            raise
        except (StageError, ProtocolError, CmlpError) as exc:
            self._client_error(ch, cl, cseq, P.ERR_INTERNAL, f"generation failed: {exc}")
            if isinstance(exc, ProtocolError):
                raise  # a confused link: start a fresh session

    def _client_error(self, ch, cl, cseq, code, text) -> None:
        if cl.state(cseq) in (P.WAIT_START, P.STREAMING) and not ch.closed:
            try:
                self._to_client(ch, cl.send(P.Error(cseq, code, text)))
            except _ClientGone:
                pass

    def _to_client(self, ch: SecureChannel, payload: bytes) -> None:
        try:
            ch.send(payload, timeout=self.opts.client_send_timeout)
        except CmlpError as exc:
            raise _ClientGone(f"client channel: {exc}") from exc

    def _parse(self, body: dict) -> Tuple[List[int], SamplingParams]:
        keys = set(body)
        if keys not in ({"prompt", "params"}, {"prompt_ids", "params"}):
            raise InvalidRequestError("request must have 'params' and one of 'prompt', 'prompt_ids'")
        params = SamplingParams.from_json(body["params"])
        if "prompt" in body:
            text = body["prompt"]
            if not isinstance(text, str) or len(text.encode("utf-8", "surrogatepass")) > MAX_PROMPT_BYTES:
                raise InvalidRequestError(
                    f"prompt must be a string of at most {MAX_PROMPT_BYTES} UTF-8 bytes"
                )
            ids = self.tok.encode(text)
        else:
            ids = body["prompt_ids"]
            vocab = getattr(self.tok, "vocab_size", None)
            if (
                not isinstance(ids, list)
                or len(ids) > MAX_PROMPT_IDS
                or not all(
                    isinstance(i, int) and not isinstance(i, bool) and 0 <= i < (vocab or 2**32) for i in ids
                )
            ):
                raise InvalidRequestError("prompt_ids must be a list of token ids in the vocabulary")
        if not ids:
            raise InvalidRequestError("the prompt encodes to no tokens")
        limit = self.activation.max_seq_len
        if len(ids) + params.max_tokens > limit:
            raise ContextTooLong(
                f"prompt ({len(ids)} tokens) + max_tokens "
                f"({params.max_tokens}) exceeds the context of {limit} tokens"
            )
        return list(ids), params

    def _generate(self, ch, cl, cseq, seq, prompt_ids, params: SamplingParams) -> None:
        stopper = Stopper(self.tok.decode, params, self.eos_ids, context_ids=prompt_ids)
        single = self.n == 1
        rng = make_rng(params.seed) if single else None
        begun = False
        inputs = [cache_clear_sentinel(), _ids_tensor(prompt_ids)]
        step = 0
        try:
            if not single:
                self.send_out(
                    self.down.send(
                        P.Begin(
                            seq, float(params.temperature), float(params.top_p), params.top_k, params.seed
                        )
                    )
                )
                begun = True
            while True:
                outputs = self.forward(seq, step, len(prompt_ids) + step, inputs)
                trace.event(self.ev["forward_done"])
                if single:
                    token = self.sample(outputs, params, rng)
                    self.watch_control()  # a Ping waits at most one step
                else:
                    self.send_out(
                        self.down.send(P.Step(seq, step, len(prompt_ids) + step, len(outputs))), outputs
                    )
                    for t in outputs:
                        t.wipe_metadata()
                    trace.event(self.ev["sent"])
                    token = self._wait_token(ch, cl, seq, step)
                trace.event(self.ev["token_in"])
                text, reason = stopper.push(token)
                self._to_client(ch, cl.send(P.Token(cseq, step, token, text)))
                trace.event(self.ev["token_out"])
                if reason is None and ch.pending():
                    self._watch_client(ch, cl)  # a Cancel, or the client went away
                if reason is not None:
                    self._to_client(
                        ch, cl.send(P.Finished(cseq, reason, len(prompt_ids), stopper.completion_tokens))
                    )
                    return
                step += 1
                inputs = [_ids_tensor((token,))]
        finally:
            if begun and self.down.state(seq) == P.ACTIVE:
                try:
                    self.send_out(self.down.send(P.End(seq)))
                except _LinkLost:
                    pass
            self.feedback.forget(seq)

    def _wait_token(self, ch: SecureChannel, cl, seq: int, step: int) -> int:
        deadline = time.monotonic() + self.opts.token_timeout
        link = self.data_in
        assert link is not None, "a one-stage pipeline samples itself, it never waits for a token"
        while True:
            try:
                msg = link.recv(timeout=WATCH_SLICE)
            except Timeout:
                self._watch_client(ch, cl)
                self.watch_control()
                if time.monotonic() > deadline:
                    raise PipelineTimeout(
                        f"no token from stage {self.n - 1} within {self.opts.token_timeout} s"
                    ) from None
                continue
            except (SessionError, CryptoError, FrameError) as exc:
                raise _LinkLost(self.link_name("in"), exc) from exc
            if not isinstance(msg, Data):
                raise _LinkLost(
                    self.link_name("in"),
                    ProtocolError(f"unexpected {type(msg).__name__} on the feedback link"),
                )
            if self.feedback.is_stale(msg.payload):
                continue
            try:
                ev = self.feedback.receive(msg.payload)
            except ProtocolError as exc:  # a dropped, replayed or forged message
                raise _LinkLost(self.link_name("in"), exc) from exc
            if isinstance(ev, P.Fail):
                raise StageError(ev.message)
            if not isinstance(ev, P.Sampled):  # e.g. an End: the table admits it, a token it is not
                raise _LinkLost(
                    self.link_name("in"),
                    ProtocolError(f"unexpected {type(ev).__name__} on the feedback link"),
                )
            if ev.seq != seq or ev.step != step:
                raise ProtocolError(
                    f"feedback for sequence {ev.seq} step {ev.step}, expected {seq} step {step}"
                )
            return ev.token_id

    def _watch_client(self, ch: SecureChannel, cl) -> None:
        """Between waits: a Cancel or a closed client channel ends the generation."""
        if not ch.pending():
            return
        try:
            msg = ch.recv(timeout=0.5)
        except Timeout:
            return
        except CmlpError as exc:
            raise _ClientGone(f"client channel: {exc}") from exc
        if isinstance(msg, Data):
            try:
                ev = cl.receive(msg.payload)
            except ProtocolError as exc:
                raise _ClientGone(f"client sent an invalid message: {exc}") from exc
            if isinstance(ev, P.Cancel):
                raise _ClientGone("cancelled by the client")
        raise _ClientGone(f"client sent {type(msg).__name__}")
