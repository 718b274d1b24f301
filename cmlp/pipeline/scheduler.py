"""The forward-only fill-drain schedule (pipeline.md 3.4; the reference calls it "1F1B").

Stage ``s`` forwards micro-batch ``t - s`` at time step ``t``.  Steps are not
synchronised at run time: each stage simply receives, forwards and sends its
micro-batches in order, and overlap comes from streaming.  The schedule
documents that order and gives the bubble fraction ``(p - 1) / (m + p - 1)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

from cmlp.errors import PipelineError


@dataclass(frozen=True)
class Op:
    kind: str                 # "recv", "forward", "send" or "idle"
    micro_batch: Optional[int] = None


class InferenceSchedule:
    def __init__(self, stages: int, micro_batches: int):
        if stages <= 0:
            raise PipelineError("schedule needs at least one stage")
        if micro_batches <= 0:
            raise PipelineError("schedule needs at least one micro-batch")
        self.stages = stages
        self.micro_batches = micro_batches
        self.total_steps = micro_batches + stages - 1

    def ops(self, stage: int, step: int) -> List[Op]:
        mb = step - stage
        if not (0 <= mb < self.micro_batches):
            return [Op("idle")]
        ops = [] if stage == 0 else [Op("recv", mb)]
        ops.append(Op("forward", mb))
        if stage < self.stages - 1:
            ops.append(Op("send", mb))
        return ops

    def stage(self, stage: int) -> Optional[List[Tuple[int, List[Op]]]]:
        if not 0 <= stage < self.stages:
            return None
        return [(t, self.ops(stage, t)) for t in range(self.total_steps)]

    def forward_order(self, stage: int) -> List[int]:
        return [op.micro_batch for _, ops in self.stage(stage) for op in ops
                if op.kind == "forward"]

    @property
    def bubble_fraction(self) -> float:
        return (self.stages - 1) / self.total_steps if self.total_steps else 0.0
