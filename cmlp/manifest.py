"""The shard manifest (pipeline.md section 1): schema, validation, serialisation.

A manifest names the model, cuts its layers into contiguous stages and gives
each stage its endpoints, its weight hashes and the attestation measurements
that pin it.  Parsing is strict about types (a JSON ``true`` is not an
integer); unknown keys are ignored as in the reference.  ``validate`` runs the
reference's checks in the reference's order, then cmlp's extra checks
(addresses parse, measurements are hex, hashes are SHA-256 hex, dtype is
known), so a bad manifest fails at load time with an error naming the stage
and the field.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Union

from cmlp import strict_json
from cmlp.attestation.base import ExpectedMeasurements
from cmlp.errors import ManifestError
from cmlp.transport.sockets import Endpoint, TcpAddr, VsockAddr, parse_tcp_addr

ACTIVATION_DTYPES = {"F32": 4, "F16": 2, "BF16": 2}
MAX_MANIFEST_BYTES = 1 << 20
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
U32_MAX = 0xFFFFFFFF
U64_MAX = 0xFFFFFFFFFFFFFFFF


# ---------------------------------------------------------------------------
# strict JSON field access
# ---------------------------------------------------------------------------
def _where(stage: Optional[int], name: str) -> str:
    return name if stage is None else f"stage {stage}: {name}"


def _get(obj: dict, key: str, kind, where: str, default=None, required=True):
    if not isinstance(obj, dict):
        raise ManifestError(f"{where} must be a JSON object")
    if key not in obj:
        if required:
            raise ManifestError(f"{where}: missing field '{key}'")
        return default
    value = obj[key]
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ManifestError(f"{where}: field '{key}' must be an integer, got {value!r}")
        if value < 0 or value > U64_MAX:
            raise ManifestError(f"{where}: field '{key}' must be a non-negative u64, got {value}")
    elif kind is bool:
        if not isinstance(value, bool):
            raise ManifestError(f"{where}: field '{key}' must be true or false, got {value!r}")
    elif not isinstance(value, kind):
        raise ManifestError(f"{where}: field '{key}' must be a {kind.__name__}, got {value!r}")
    return value


def _u32(obj, key, where):
    v = _get(obj, key, int, where)
    if v > U32_MAX:
        raise ManifestError(f"{where}: field '{key}' must fit in u32, got {v}")
    return v


# ---------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class PortSpec:
    endpoint: Endpoint

    @classmethod
    def from_json(cls, obj, where: str) -> "PortSpec":
        kind = _get(obj, "type", str, where)
        if kind == "tcp":
            addr = _get(obj, "addr", str, where)
            try:
                return cls(parse_tcp_addr(addr))
            except ValueError as exc:
                raise ManifestError(f"{where}: {exc}") from None
        if kind == "vsock":
            return cls(VsockAddr(_u32(obj, "cid", where), _u32(obj, "port", where)))
        raise ManifestError(f"{where}: unknown port type '{kind}' (expected tcp or vsock)")

    def to_json(self) -> dict:
        if isinstance(self.endpoint, VsockAddr):
            return {"type": "vsock", "cid": self.endpoint.cid, "port": self.endpoint.port}
        return {"type": "tcp", "addr": str(self.endpoint)}

    @property
    def is_tcp(self) -> bool:
        return isinstance(self.endpoint, TcpAddr)


@dataclass(frozen=True)
class StageEndpoints:
    control: PortSpec
    data_in: PortSpec
    data_out: PortSpec


@dataclass(frozen=True)
class StageSpec:
    stage_idx: int
    layer_start: int
    layer_end: int
    weight_hashes: List[str]
    expected_measurements: Dict[str, str]
    endpoint: StageEndpoints
    require_weight_hashes: bool = False

    @classmethod
    def from_json(cls, obj, position: Optional[int] = None) -> "StageSpec":
        where = "stage" if position is None else f"stage {position}"
        idx = _get(obj, "stage_idx", int, where)
        where = f"stage {position if position is not None else idx}"
        hashes = _get(obj, "weight_hashes", list, where)
        for i, h in enumerate(hashes):
            if not isinstance(h, str):
                raise ManifestError(f"{where}: weight_hashes[{i}] must be a string")
        meas = _get(obj, "expected_measurements", dict, where)
        for k, v in meas.items():
            if not isinstance(v, str):
                raise ManifestError(f"{where}: expected_measurements[{k!r}] must be a hex string")
        ep = _get(obj, "endpoint", dict, where)
        endpoints = StageEndpoints(
            control=PortSpec.from_json(
                _get(ep, "control", dict, f"{where}: endpoint"), f"{where}: endpoint.control"
            ),
            data_in=PortSpec.from_json(
                _get(ep, "data_in", dict, f"{where}: endpoint"), f"{where}: endpoint.data_in"
            ),
            data_out=PortSpec.from_json(
                _get(ep, "data_out", dict, f"{where}: endpoint"), f"{where}: endpoint.data_out"
            ),
        )
        return cls(
            stage_idx=idx,
            layer_start=_get(obj, "layer_start", int, where),
            layer_end=_get(obj, "layer_end", int, where),
            require_weight_hashes=_get(
                obj, "require_weight_hashes", bool, where, default=False, required=False
            ),
            weight_hashes=list(hashes),
            expected_measurements=dict(meas),
            endpoint=endpoints,
        )

    def to_json(self) -> dict:
        """Field order of the reference's serialisation (pipeline.md 2.2)."""
        return {
            "stage_idx": self.stage_idx,
            "layer_start": self.layer_start,
            "layer_end": self.layer_end,
            "require_weight_hashes": self.require_weight_hashes,
            "weight_hashes": list(self.weight_hashes),
            "expected_measurements": dict(self.expected_measurements),
            "endpoint": {
                "control": self.endpoint.control.to_json(),
                "data_in": self.endpoint.data_in.to_json(),
                "data_out": self.endpoint.data_out.to_json(),
            },
        }

    def measurements(self) -> Optional[ExpectedMeasurements]:
        """The pins as bytes, or None when the stage pins nothing."""
        if not self.expected_measurements:
            return None
        try:
            return ExpectedMeasurements.from_hex(self.expected_measurements)
        except ValueError as exc:
            raise ManifestError(f"invalid measurements for stage {self.stage_idx}: {exc}") from None

    def admits_init(self, init: "StageSpec") -> bool:
        """Whether an Init's spec for this stage agrees with this (local, trusted) one.

        Index, layers and weight hashes must be equal.  The Init may pin *more*
        of this stage's measurements than the local manifest (the host can pin
        the exact image PCRs, which an image cannot contain about itself), but
        never fewer and never other values.
        """
        mine, theirs = self.security_fields(), init.security_fields()
        if mine[:5] != theirs[:5]:
            return False
        return set(mine[5]) <= set(theirs[5])

    def security_fields(self) -> tuple:
        """What must agree between a stage's own manifest and the Init it receives."""
        return (
            self.stage_idx,
            self.layer_start,
            self.layer_end,
            self.require_weight_hashes,
            tuple(self.weight_hashes),
            tuple(sorted((str(k), v.lower()) for k, v in self.expected_measurements.items())),
        )


@dataclass(frozen=True)
class ActivationSpec:
    dtype: str
    hidden_dim: int
    max_seq_len: int

    @classmethod
    def from_json(cls, obj) -> "ActivationSpec":
        where = "activation_spec"
        dtype = _get(obj, "dtype", str, where)
        if dtype not in ACTIVATION_DTYPES:
            raise ManifestError(f"{where}: dtype must be one of F32, F16, BF16, got '{dtype}'")
        return cls(
            dtype=dtype,
            hidden_dim=_u32(obj, "hidden_dim", where),
            max_seq_len=_u32(obj, "max_seq_len", where),
        )

    def to_json(self) -> dict:
        return {"dtype": self.dtype, "hidden_dim": self.hidden_dim, "max_seq_len": self.max_seq_len}


@dataclass(frozen=True)
class Manifest:
    model_name: str
    model_version: str
    total_layers: int
    stages: List[StageSpec]
    activation_spec: ActivationSpec
    source: Optional[str] = field(default=None, compare=False)
    # host-blind mode (docs/host-blind.md): where stage 0 takes client channels; the last
    # stage's data_out is then the feedback link to stage 0's data_in (direct or relayed)
    client_endpoint: Optional[PortSpec] = None

    # -- loading -----------------------------------------------------------
    @classmethod
    def from_json(cls, text: Union[str, bytes], source: Optional[str] = None) -> "Manifest":
        if len(text) > MAX_MANIFEST_BYTES:
            raise ManifestError(f"manifest larger than {MAX_MANIFEST_BYTES} bytes")
        try:
            obj = strict_json.loads(text)
        except ValueError as exc:
            raise ManifestError(f"not valid JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise ManifestError("top level must be a JSON object")
        stages_json = _get(obj, "stages", list, "manifest")
        manifest = cls(
            model_name=_get(obj, "model_name", str, "manifest"),
            model_version=_get(obj, "model_version", str, "manifest"),
            total_layers=_get(obj, "total_layers", int, "manifest"),
            stages=[StageSpec.from_json(s, i) for i, s in enumerate(stages_json)],
            activation_spec=ActivationSpec.from_json(_get(obj, "activation_spec", dict, "manifest")),
            source=source,
            client_endpoint=_host_blind(obj),
        )
        manifest.validate()
        return manifest

    @classmethod
    def load(cls, path: Union[str, "os.PathLike[str]"]) -> "Manifest":
        path = Path(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ManifestError(f"{path}: file not found") from None
        except OSError as exc:
            raise ManifestError(f"{path}: {exc.strerror}") from None
        try:
            return cls.from_json(data, source=str(path))
        except ManifestError as exc:
            raise ManifestError(f"{path}: {str(exc).removeprefix('manifest error: ')}") from None

    # -- validation (pipeline.md 1.5, then cmlp's extra checks) --------------
    def validate(self) -> None:
        if not self.stages:
            raise ManifestError("empty stages list")
        for i, s in enumerate(self.stages):
            if s.stage_idx != i:
                raise ManifestError(f"stage {i} has wrong stage_idx field: {s.stage_idx}")
            if s.require_weight_hashes and not s.weight_hashes:
                raise ManifestError(f"stage {i}: require_weight_hashes is true but weight_hashes is empty")
            if s.layer_start >= s.layer_end:
                raise ManifestError(
                    f"stage {i}: invalid layer range [{s.layer_start}, "
                    f"{s.layer_end}) (layer_start must be < layer_end)"
                )
        for a, b in itertools.pairwise(self.stages):
            if a.layer_end != b.layer_start:
                raise ManifestError(
                    f"stage {a.stage_idx}: non-contiguous layers: layer_end {a.layer_end} but "
                    f"stage {b.stage_idx} starts at {b.layer_start}"
                )
        if self.stages[0].layer_start != 0:
            raise ManifestError(f"stage 0: layer_start must be 0, got {self.stages[0].layer_start}")
        if self.stages[-1].layer_end != self.total_layers:
            raise ManifestError(
                f"layer count mismatch: stages cover {self.stages[-1].layer_end} "
                f"layers, total_layers is {self.total_layers}"
            )
        for s in self.stages:
            s.measurements()  # hex and integer keys
            for j, h in enumerate(s.weight_hashes):
                if not _SHA256_HEX.match(h):
                    raise ManifestError(
                        f"stage {s.stage_idx}: weight_hashes[{j}] is not a lowercase hex SHA-256: {h!r}"
                    )

    # -- helpers -----------------------------------------------------------
    def stage(self, idx: int) -> StageSpec:
        if not 0 <= idx < len(self.stages):
            raise ManifestError(f"stage_idx {idx} out of range (manifest has {len(self.stages)} stages)")
        return self.stages[idx]

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    def relayed_links(self) -> List[int]:
        """Stages i whose data_out is not stage i+1's data_in: the host relays them."""
        return [
            i
            for i in range(len(self.stages) - 1)
            if self.stages[i].endpoint.data_out != self.stages[i + 1].endpoint.data_in
        ]

    @property
    def host_blind(self) -> bool:
        return self.client_endpoint is not None

    def feedback_relayed(self) -> bool:
        """Host-blind: the last stage's data_out is not stage 0's data_in (the host relays it)."""
        return (
            self.host_blind
            and len(self.stages) > 1
            and self.stages[-1].endpoint.data_out != self.stages[0].endpoint.data_in
        )

    def pipeline_digest(self) -> bytes:
        """SHA-256 identity of the pipeline, bound into every party's attested role.

        Covers the model, the layer cuts, the weight hashes and the activation
        spec; leaves out endpoints and measurement pins, which the host's copy
        may legitimately differ in (real vsock CIDs, exact image PCRs).
        """
        doc = {
            "model_name": self.model_name,
            "model_version": self.model_version,
            "total_layers": self.total_layers,
            "activation_spec": self.activation_spec.to_json(),
            "stages": [
                [s.stage_idx, s.layer_start, s.layer_end, s.require_weight_hashes, list(s.weight_hashes)]
                for s in self.stages
            ],
        }
        if self.host_blind:  # the mode is part of the identity (reference digests unchanged)
            doc["host_blind"] = True
        return hashlib.sha256(b"cmlp-pipeline-v1\0" + compact_json(doc).encode()).digest()

    def to_json(self) -> dict:
        doc = {
            "model_name": self.model_name,
            "model_version": self.model_version,
            "total_layers": self.total_layers,
            "stages": [s.to_json() for s in self.stages],
            "activation_spec": self.activation_spec.to_json(),
        }
        if self.client_endpoint is not None:
            doc["host_blind"] = {"client": self.client_endpoint.to_json()}
        return doc

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2) + "\n"


def _host_blind(obj: dict) -> Optional[PortSpec]:
    """The optional ``host_blind`` object: ``{"client": PortSpec}`` (stage 0's client endpoint)."""
    hb = _get(obj, "host_blind", dict, "manifest", required=False)
    if hb is None:
        return None
    return PortSpec.from_json(_get(hb, "client", dict, "host_blind"), "host_blind.client")


def compact_json(obj) -> str:
    """Compact JSON as serde_json writes it (no spaces, insertion order)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
