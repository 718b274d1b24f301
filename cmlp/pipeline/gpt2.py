"""GPT-2 in the pipeline: the stage executor and the orchestrator's greedy generation.

Tensor conventions (pipeline.md 3.2): ``cache_clear`` U32 [0] (the sentinel),
``input_ids`` U32 [B, T], ``hidden_states`` F32 [B, T, n_embd] between stages,
``logits`` F32 [B, vocab] from the last stage.  Unlike the reference, every
non-last stage re-emits the sentinel ahead of its hidden states, so every
stage resets its KV cache at the start of a prompt and stages can serve many
sessions; the reference's downstream stages check for the sentinel too, so
this stays interoperable.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, List, Optional, Tuple

import numpy as np

from cmlp.deadline import Deadline
from cmlp.errors import (
    CmlpError,
    ForwardFailed,
    InitFailed,
    PipelineShutdown,
    PipelineTimeout,
    SessionError,
    StageFailed,
    Tainted,
)
from cmlp.hostblind.sampling import greedy_id  # the rule's one implementation (a leaf module)
from cmlp.retry import RetryPolicy, retry
from cmlp.transport.wire import DType, Tensor

if TYPE_CHECKING:
    from cmlp.model import Gpt2Shard

log = logging.getLogger(__name__)

SENTINEL_NAME = "cache_clear"


def cache_clear_sentinel() -> Tensor:
    return Tensor(SENTINEL_NAME, DType.U32, (0,), np.zeros(0, np.uint32))


def is_sentinel(t: Tensor) -> bool:
    return t.dtype == DType.U32 and t.shape == (0,)


class Gpt2Executor:
    """Runs layers [layer_start, layer_end) of a model directory of any registered family.

    The family comes from config.json (cmlp.model.registry); ``model_name``
    (the manifest's) is checked against it.  Hidden states cross the wire in
    ``activation_spec.dtype``: F32, or BF16 (half the bytes per hop) for models
    whose ``wire_dtype`` is BF16; a BF16 stage still accepts F32 input.
    """

    def __init__(self, model_dir, threads: Optional[int] = None, model_name: Optional[str] = None):
        self.model_dir = model_dir
        self.threads = threads
        self.model_name = model_name
        self.shard: Optional[Gpt2Shard] = None
        self.wire = DType.F32
        self._request: Optional[Tuple[int, int, int]] = None  # (request_id, seq_len, micro-batches)

    def begin_session(self) -> None:
        """A new orchestrator session starts from an empty (wiped) KV cache."""
        if self.shard is not None:
            self.shard.clear_cache()

    def begin_request(self, request_id: int, seq_len: int, num_micro_batches: int) -> None:
        """Remember what the request claims, so forward() can check the cache position."""
        self._request = (request_id, seq_len, num_micro_batches)

    def _check_position(self, request_id: int, micro_batch: int, sentinel: bool, tokens: int) -> None:
        """Defence in depth: the KV cache must be exactly where ``seq_len`` says.

        ``seq_len`` is the context length including this request's tokens, so
        before the last micro-batch's forward the cache holds ``seq_len - T``
        positions (0 after a cache-clear sentinel).  A host that drops the
        sentinel (or a frame of it) would otherwise make the stage continue the
        previous user's context.
        """
        req = self._request
        if req is None or req[0] != request_id:
            raise ForwardFailed(request_id, micro_batch, "forward outside a started request")
        _, seq_len, m = req
        shard = self.shard
        if shard is None:
            raise ForwardFailed(request_id, micro_batch, "forward before init")
        past = 0 if sentinel else shard.past_len
        end = past + tokens
        if end > seq_len or (micro_batch == m - 1 and end != seq_len):
            shard.clear_cache()  # fail closed: nothing of that context is kept
            raise ForwardFailed(
                request_id,
                micro_batch,
                f"KV cache position mismatch: {past} cached + {tokens} new tokens != seq_len "
                f"{seq_len}{'' if sentinel else ' (no cache-clear sentinel)'}",
            )

    def init(self, spec, activation, num_stages) -> None:
        from cmlp.model.registry import load_shard

        if self.shard is not None and (self.shard.layer_start, self.shard.layer_end) == (
            spec.layer_start,
            spec.layer_end,
        ):
            # already loaded: the activation spec is still checked, every time
            self.wire = self._check_activation(self.shard, activation)
            self.shard.clear_cache()
            return
        try:
            shard = load_shard(
                self.model_dir,
                spec.layer_start,
                spec.layer_end,
                threads=self.threads,
                max_seq_len=activation.max_seq_len,
                model_name=self.model_name,
            )
        except CmlpError as exc:
            raise InitFailed(f"failed to load model shard: {exc}") from exc
        self.wire = self._check_activation(shard, activation)
        if self.shard is not None:
            self.shard.clear_cache()  # wipe the old shard's cache before dropping it
        self.shard = shard
        log.info(
            "loaded layers [%d, %d) of %s: %.1f MB, %d threads, wire %s",
            spec.layer_start,
            spec.layer_end,
            self.model_dir,
            shard.weight_bytes / 1e6,
            shard.threads,
            self.wire.name,
        )

    @staticmethod
    def _check_activation(shard, activation) -> DType:
        """The Init's activation spec against the loaded model (every Init, every time)."""
        allowed = ("F32", shard.wire_dtype)
        if activation.dtype not in allowed:
            raise InitFailed(
                f"activation dtype {activation.dtype} is not supported "
                f"(this model's stages exchange {' or '.join(sorted(set(allowed)))})"
            )
        if activation.hidden_dim != shard.hidden_size:
            raise InitFailed(
                f"activation_spec.hidden_dim {activation.hidden_dim} does not "
                f"match the model's hidden size {shard.hidden_size}"
            )
        if activation.max_seq_len > shard.max_positions:
            raise InitFailed(
                f"activation_spec.max_seq_len {activation.max_seq_len} exceeds "
                f"the model's n_positions {shard.max_positions}"
            )
        return DType[activation.dtype]

    def weight_hashes(self) -> List[str]:
        if self.shard is None:
            raise InitFailed("weight hashes asked for before init()")
        return [digest for _, digest in self.shard.weight_hashes()]

    def forward(self, request_id: int, micro_batch: int, inputs: List[Tensor]) -> List[Tensor]:
        shard = self.shard
        if shard is None:
            raise ForwardFailed(request_id, micro_batch, "shard is not initialized")
        if not inputs:
            raise ForwardFailed(request_id, micro_batch, "no input tensor")
        sentinel = is_sentinel(inputs[0])
        if sentinel:
            if len(inputs) < 2:
                raise ForwardFailed(request_id, micro_batch, "cache-clear sentinel without actual input")
            shard.clear_cache()
            x = inputs[1]
        else:
            x = inputs[0]
        want = (DType.U32,) if shard.is_first else (DType.F32, self.wire)
        if x.dtype not in want:
            raise ForwardFailed(
                request_id,
                micro_batch,
                f"expected a {want[-1].name} input tensor, got {x.dtype.name} '{x.name}' {list(x.shape)}",
            )
        if len(x.shape) < 2:
            raise ForwardFailed(
                request_id, micro_batch, f"input '{x.name}' {list(x.shape)} has no sequence dimension"
            )
        self._check_position(request_id, micro_batch, sentinel, int(x.shape[1]))
        try:
            out = shard.forward(x.data)
        except CmlpError as exc:
            raise ForwardFailed(request_id, micro_batch, str(exc)) from exc
        if shard.is_last:
            result = Tensor("logits", DType.F32, out.shape, out)
        elif self.wire == DType.BF16:
            result = Tensor("hidden_states", DType.BF16, out.shape, f32_to_bf16_bits(out))
        else:
            result = Tensor("hidden_states", DType.F32, out.shape, out)
        if sentinel and not shard.is_last:
            return [cache_clear_sentinel(), result]
        return [result]

    # -- slots: continuous batching in host-blind mode (docs/batching.md) -----------
    @property
    def supports_slots(self) -> bool:
        """Continuous batching: every registered family (cmlp.model.slots), in every weight
        dtype, over an F32 or BF16 wire."""
        return self.shard is not None and hasattr(self.shard, "forward_slots")

    def _slot_shard(self, seq: int = 0) -> Gpt2Shard:
        """The loaded shard, for the slot API below (used once supports_batching() said so)."""
        if self.shard is None:
            raise ForwardFailed(seq, 0, "no model shard loaded")
        return self.shard

    def configure_slots(self, slots: int, kv_budget_bytes: Optional[int] = None) -> int:
        """Reserve per-sequence KV-cache slots (all empty); returns how many fit."""
        return self._slot_shard().configure_slots(slots, kv_budget_bytes).n_slots

    @property
    def free_slots(self) -> int:
        table = self._slot_shard().slots
        return 0 if table is None else len(table.free)

    def open_seq(self, seq: int) -> None:
        table = self._slot_shard(seq).slots
        if table is None:
            raise ForwardFailed(seq, 0, "no KV-cache slots configured")
        try:
            table.open(seq)
        except CmlpError as exc:
            raise ForwardFailed(seq, 0, str(exc)) from exc

    def has_seq(self, seq: int) -> bool:
        table = self._slot_shard(seq).slots
        return table is not None and seq in table

    def close_seq(self, seq: int) -> None:
        """Free the sequence's slot now (its cached K/V are zeroed)."""
        table = self._slot_shard(seq).slots
        if table is not None:
            table.close(seq)

    def close_all_seqs(self) -> None:
        if self.shard is not None and self.shard.slots is not None:
            self.shard.slots.close_all()

    def check_row(self, seq: int, step: int, seq_len: int, x: Tensor) -> None:
        """A row's tensor and position, before it joins a forward (defence in depth:
        ``seq_len`` is the context length after this row, so the slot must hold
        ``seq_len - T`` positions)."""
        shard = self._slot_shard(seq)
        want = (DType.U32,) if shard.is_first else (DType.F32, self.wire)
        dims = 2 if shard.is_first else 3
        if (
            x.dtype not in want
            or len(x.shape) != dims
            or x.shape[0] != 1
            or x.shape[1] < 1
            or (dims == 3 and x.shape[2] != shard.hidden_size)
        ):
            raise ForwardFailed(
                seq,
                step,
                f"expected a {want[-1].name} [1, T{'' if dims == 2 else ', C'}]"
                f" row, got {x.dtype.name} {list(x.shape)}",
            )
        if shard.is_first and int(x.data.max()) >= shard.vocab_size:
            raise ForwardFailed(seq, step, f"token id out of range for vocab_size {shard.vocab_size}")
        if not self.has_seq(seq):
            raise ForwardFailed(seq, step, "sequence has no KV-cache slot")
        past = shard.slot_len(seq)
        if past + int(x.shape[1]) != seq_len:
            raise ForwardFailed(
                seq,
                step,
                f"KV cache position mismatch: {past} cached + {x.shape[1]} new tokens != seq_len {seq_len}",
            )

    def forward_rows(self, seqs: List[int], rows: List[Tensor]):
        """One forward over checked rows [1, T_b(, C)]: decode rows and prompts of up to
        ``mix_rows`` tokens together, or one longer prefill alone (cmlp.slot_rows).

        Returns logits [B, V] (last stage: each row's last position) or one hidden view
        [1, T_b, C] per row, valid until the next forward."""
        if len(rows) == 1:
            data, lens = rows[0].data, None
        else:
            flat = [r.data.reshape((1, -1) + tuple(r.data.shape[2:])) for r in rows]
            if len({r.dtype for r in rows}) > 1:  # F32 and BF16 rows (a BF16 stage takes both)
                from cmlp.model.quant import bf16_to_f32

                flat = [
                    bf16_to_f32(d) if r.dtype == DType.BF16 else d for d, r in zip(flat, rows, strict=True)
                ]
            data, lens = np.concatenate(flat, axis=1), [int(r.shape[1]) for r in rows]
        shard = self._slot_shard(seqs[0])
        try:
            out = shard.forward_slots(data, seqs, lens)
        except CmlpError as exc:
            raise ForwardFailed(seqs[0], 0, str(exc)) from exc
        if shard.is_last:
            return out
        if lens is None:
            return [out]
        offs = np.cumsum([0] + lens)
        return [out[:, offs[i] : offs[i + 1]] for i in range(len(lens))]

    @property
    def mix_rows(self) -> int:
        """The longest prompt chunk that may share a forward with other rows."""
        shard = self.shard
        return int(getattr(getattr(shard, "_engine", None), "mix_rows", 1))

    def hidden_tensor(self, hidden: np.ndarray) -> Tensor:
        """Hidden states [B, T, C] (float32) for the next stage, in this stage's wire dtype."""
        if self.wire == DType.BF16:
            return Tensor("hidden_states", DType.BF16, hidden.shape, f32_to_bf16_bits(hidden))
        return Tensor("hidden_states", DType.F32, hidden.shape, hidden)


ModelExecutor = Gpt2Executor  # the family-neutral name


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits (uint16), round to nearest even, as torch's .to(bfloat16)."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = bits + (np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))
    out = (rounded >> np.uint32(16)).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        out[nan] = 0x7FC0
    return out


def greedy_token(logits: np.ndarray) -> int:
    """argmax over the flat logits; exact ties go to the *last* index (Rust ``max_by``)."""
    return greedy_id(np.asarray(logits, dtype=np.float32).reshape(-1))


@dataclass
class Generation:
    prompt_ids: List[int]
    generated_ids: List[int] = field(default_factory=list)
    latencies_ms: List[float] = field(default_factory=list)
    stage_compute_us: List[List[Optional[int]]] = field(default_factory=list)
    recoveries: int = 0

    def summary(self) -> dict:
        """The --latency-out document: the reference keys plus cmlp's (keys sorted)."""
        lat = self.latencies_ms
        return {
            "generated_ids": list(self.generated_ids),
            "generation_tokens": max(len(lat) - 1, 0),
            "latencies_ms": list(lat),
            "prompt_ids": list(self.prompt_ids),
            "prompt_ms": lat[0] if lat else 0.0,
            "recoveries": self.recoveries,
            "stage_compute_us": [list(s) for s in self.stage_compute_us],
        }


def _ids_tensor(ids: List[int]) -> Tensor:
    arr = np.asarray([ids], dtype=np.uint32)
    return Tensor("input_ids", DType.U32, arr.shape, arr)


# Failures that a reconnect can cure: a stage or its channel went away, or the
# pipeline lost sync.  A stage that *reports* an error (RequestFailed) would
# fail again on replay, so it is not retried.
# recovery retries until its deadline (recover_timeout), every 0.25-0.5 s
RECONNECT_POLICY = RetryPolicy(
    max_retries=sys.maxsize, initial_delay=0.5, max_delay=0.5, backoff_multiplier=1.0
)
RECOVERABLE = (StageFailed, PipelineTimeout, Tainted, SessionError, PipelineShutdown)


class Generator:
    """Greedy decoding over a pipeline (pipeline.md 5.5 step 7), with optional recovery.

    ``orch`` is a started Orchestrator; ``reconnect()`` builds and starts a new
    one (needed only for recovery).  ``max_tokens`` counts
    generation steps including the prompt step; there is no EOS stop.  Step 0
    sends ``[cache_clear, input_ids [1, P]]``; later steps send only the last
    generated token; ``seq_len`` is the context length before this step's token.

    With ``recover > 0``, a step that fails because a stage or channel went
    away reconnects (persistent stages accept a new session; a killed stage
    must have been restarted), replays the prompt and every token generated so
    far as one prefill to rebuild every KV cache, and continues.  The replayed
    prefill is computed with GEMM instead of step-by-step GEMV, so the logits
    agree to float rounding (not bit for bit); greedy ids only differ if two
    logits tie within that rounding.
    """

    def __init__(
        self,
        orch,
        reconnect: Optional[Callable[[], object]] = None,
        recover: int = 0,
        recover_timeout: float = 120.0,
    ):
        if recover and reconnect is None:
            raise ValueError("recovery needs a reconnect function")
        self.orch = orch
        self.reconnect = reconnect
        self.recover = recover
        self.recover_timeout = recover_timeout

    def close(self) -> None:
        if self.orch is not None:
            self.orch.close()

    def shutdown(self) -> None:
        self.orch.shutdown()

    def _reconnect(self, cause: BaseException) -> None:
        log.warning("pipeline failed (%s); reconnecting to replay the context", cause)
        reconnect = self.reconnect
        assert reconnect is not None, "__init__ refuses recover without reconnect"
        self.orch.close()
        self.orch = retry(
            reconnect,
            RECONNECT_POLICY,
            on=(CmlpError,),
            deadline=Deadline(self.recover_timeout),
            give_up=lambda exc, n: PipelineTimeout(
                f"recovery: could not reconnect within {self.recover_timeout} s "
                f"({exc}); first failure: {cause}"
            ),
        )

    def generate(
        self, prompt_ids: List[int], max_tokens: int, on_token: Optional[Callable[[int], None]] = None
    ) -> Generation:
        gen = Generation(prompt_ids=list(prompt_ids))
        token_ids = list(prompt_ids)
        budget = self.recover
        replay = True  # the first step is a full prefill
        for _ in range(max_tokens):
            t0 = time.perf_counter()
            while True:
                if replay:
                    inputs = [[cache_clear_sentinel(), _ids_tensor(token_ids)]]
                else:
                    inputs = [[_ids_tensor(token_ids[-1:])]]
                try:
                    result = self.orch.infer(inputs, seq_len=len(token_ids))
                    break
                except RECOVERABLE as exc:
                    if budget <= 0:
                        raise
                    budget -= 1
                    gen.recoveries += 1
                    self._reconnect(exc)
                    replay = True
            replay = False
            token = greedy_token(result.outputs[0][0].data[0])
            gen.latencies_ms.append((time.perf_counter() - t0) * 1000.0)
            gen.stage_compute_us.append(list(result.compute_us))
            gen.generated_ids.append(token)
            token_ids.append(token)
            if on_token is not None:
                on_token(token)
        return gen


def generate(
    orchestrator, prompt_ids: List[int], max_tokens: int, on_token: Optional[Callable[[int], None]] = None
) -> Generation:
    """Greedy decoding on an already started orchestrator (no recovery)."""
    return Generator(orchestrator).generate(prompt_ids, max_tokens, on_token)
