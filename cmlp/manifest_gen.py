"""Write a manifest for a model directory: any split, any endpoint layout, real weight hashes.

    generate(model_dir, [6, 6], layout="direct", base_port=9000) -> Manifest

The layers come from the model's config.json, the ``weight_hashes`` of each
stage from the tensors that stage will load (the same list `cmlp model hashes`
prints), so the stages refuse any other weights.  The result is built as JSON
and parsed back with ``Manifest.from_json``: the generator can only produce
what the loader accepts.

Endpoint layouts are one small function each, registered in ``LAYOUTS``:
``(num_stages, base_port, host) -> [{"control", "data_in", "data_out"}, ...]``
with the port specs in manifest JSON; the CLI offers every key.  Options that
add to any layout (e.g. a host-blind mode: a client endpoint on stage 0, a
feedback link from the last stage) are one function each in ``EXTRAS``:
``(doc, layout, base_port, host) -> None`` edits the manifest JSON before it
is validated; ``cmlp manifest init`` grows a ``--<name>`` flag for each key.

Port plans (base port P, stage i of n; the packaged examples use P = 9000 / 5000):
  direct  control P+10i, data_in P+10i+1, data_out = stage i+1's data_in, last P+10n+1
  relay   as direct, but stage i < n-1 sends to the host relay on P+10i+101
  vsock   every enclave: control P, data_in P+1 (any CID); data_out to the host (CID 3):
          relays P+1001+i, the last stage's output P+2

With ``host_blind`` (docs/host-blind.md) the last stage's data_out closes the ring to
stage 0's data_in (direct: straight to it; relay: the host's port P+10(n-1)+101; vsock: the
host's vsock port P+1001+(n-1)), and stage 0 takes clients on P+2 (tcp) / vsock P+3.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple

from cmlp.errors import ManifestError
from cmlp.manifest import Manifest

HOST_CID = 3  # the parent instance, as seen from a Nitro enclave
ANY_CID = 0  # placeholder: the host fills in each enclave's real CID
MODEL_VERSION = "1.0"
MAX_PORT = 65535

Ports = List[Dict[str, dict]]


def _tcp(host: str, port: int) -> dict:
    if not 0 < port <= MAX_PORT:
        raise ManifestError(f"port {port} out of range: choose a lower --base-port")
    addr = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return {"type": "tcp", "addr": addr}


def _vsock(cid: int, port: int) -> dict:
    if not 0 < port <= MAX_PORT:
        raise ManifestError(f"port {port} out of range: choose a lower --base-port")
    return {"type": "vsock", "cid": cid, "port": port}


def direct_layout(n: int, base: int, host: str) -> Ports:
    """TCP; each stage connects straight to the next one's data_in."""
    eps = [{"control": _tcp(host, base + 10 * i), "data_in": _tcp(host, base + 10 * i + 1)} for i in range(n)]
    for i, ep in enumerate(eps):
        ep["data_out"] = eps[i + 1]["data_in"] if i + 1 < n else _tcp(host, base + 10 * n + 1)
    return eps


def relay_layout(n: int, base: int, host: str) -> Ports:
    """TCP; every inter-stage link goes through the orchestrator's ciphertext relay."""
    eps = direct_layout(n, base, host)
    for i in range(n - 1):
        eps[i]["data_out"] = _tcp(host, base + 10 * i + 101)
    return eps


def vsock_layout(n: int, base: int, host: str) -> Ports:
    """The Nitro layout: enclaves reach only the host, which relays every link."""
    del host
    return [
        {
            "control": _vsock(ANY_CID, base),
            "data_in": _vsock(ANY_CID, base + 1),
            "data_out": _vsock(HOST_CID, base + 1001 + i if i + 1 < n else base + 2),
        }
        for i in range(n)
    ]


def close_ring(eps: Ports, layout: str, base: int, host: str) -> dict:
    """Host-blind: route the last stage's data_out back to stage 0; return the client endpoint."""
    n = len(eps)
    if layout == "vsock":
        if n > 1:
            eps[-1]["data_out"] = _vsock(HOST_CID, base + 1001 + n - 1)
        return _vsock(ANY_CID, base + 3)
    if layout == "relay" and n > 1:
        eps[-1]["data_out"] = _tcp(host, base + 10 * (n - 1) + 101)
    else:
        eps[-1]["data_out"] = dict(eps[0]["data_in"])
    return _tcp(host, base + 2)


LAYOUTS: Dict[str, Callable[[int, int, str], Ports]] = {
    "direct": direct_layout,
    "relay": relay_layout,
    "vsock": vsock_layout,
}


Extra = Callable[[dict, str, int, str], None]
EXTRAS: Dict[str, Extra] = {}


def parse_splits(text: str) -> List[int]:
    """``"6,6"`` -> [6, 6]: layers per stage, in order."""
    try:
        splits = [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"--splits wants layer counts per stage like 6,6, got {text!r}") from None
    if not splits or any(s < 1 for s in splits):
        raise ValueError(f"--splits wants positive layer counts per stage, got {text!r}")
    return splits


def stage_bounds(splits: Sequence[int], n_layer: int) -> List[Tuple[int, int]]:
    """[6, 6] with 12 layers -> [(0, 6), (6, 12)]; the counts must add up to n_layer."""
    if sum(splits) != n_layer:
        raise ManifestError(
            f"--splits {','.join(map(str, splits))} covers {sum(splits)} layers but the model has {n_layer}"
        )
    bounds, start = [], 0
    for count in splits:
        bounds.append((start, start + count))
        start += count
    return bounds


def _family(model_dir: Path):
    """(family name, family package): the registry's choice from config.json."""
    from cmlp.model.registry import detect_family, family_module

    family = detect_family(model_dir)
    return family, family_module(family)


def generate(
    model_dir,
    splits: Sequence[int],
    layout: str = "direct",
    base_port: int = 9000,
    host: str = "127.0.0.1",
    with_hashes: bool = True,
    host_blind: bool = False,
    extras: Sequence[str] = (),
) -> Manifest:
    """A validated manifest for ``model_dir`` cut into ``splits`` layers per stage."""
    if layout not in LAYOUTS:
        raise ManifestError(f"unknown layout {layout!r} (choose from {', '.join(LAYOUTS)})")
    for extra in extras:
        if extra not in EXTRAS:
            raise ManifestError(f"unknown option {extra!r} (known: {', '.join(EXTRAS) or 'none'})")
    model_dir = Path(model_dir)
    name, family = _family(model_dir)
    facts = family.model_facts(model_dir)
    bounds = stage_bounds(splits, facts.n_layer)
    endpoints = LAYOUTS[layout](len(bounds), base_port, host)
    client = close_ring(endpoints, layout, base_port, host) if host_blind else None
    stages = []
    for i, ((start, end), ep) in enumerate(zip(bounds, endpoints, strict=True)):
        # what the stage will check after loading
        hashes = family.shard_hashes(model_dir, start, end) if with_hashes else []
        stages.append(
            {
                "stage_idx": i,
                "layer_start": start,
                "layer_end": end,
                "require_weight_hashes": bool(hashes),
                "weight_hashes": hashes,
                "expected_measurements": {},
                "endpoint": ep,
            }
        )
    doc = {
        "model_name": name,
        "model_version": MODEL_VERSION,
        "total_layers": facts.n_layer,
        "stages": stages,
        "activation_spec": {
            "dtype": facts.wire_dtype,
            "hidden_dim": facts.hidden_size,
            "max_seq_len": facts.max_positions,
        },
    }
    if client is not None:
        doc["host_blind"] = {"client": client}
    for extra in extras:
        EXTRAS[extra](doc, layout, base_port, host)
    return Manifest.from_json(json.dumps(doc), source=f"generated from {model_dir}")
