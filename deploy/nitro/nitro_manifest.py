#!/usr/bin/env python3
"""Manifests and measurements for the AWS Nitro deployment (docs/nitro.md).

Used by scripts/build_nitro.sh and scripts/run_nitro.sh.  Standard library
only, so it runs with whatever python3 the parent instance has (cmlp itself
need not be importable).

  pin TEMPLATE PCR8            TEMPLATE with every stage's expected_measurements
                               set to {"8": PCR8} (the EIF signing certificate)
  pcr8 FILE                    the PCR8 value in `nitro-cli pcr` output
  measurements NAME=FILE...    print the PCRs of `nitro-cli build-enclave` outputs
  host PINNED CIDS [FILE...]   PINNED with each stage's control/data_in CID set
                               (CIDS: comma-separated, one per stage; a host-blind
                               manifest's client endpoint gets stage 0's); with the
                               build outputs, check that every image was signed
                               with the certificate the manifest pins

The host's manifest adds each stage's exact-image PCR0/1/2 to that pin (``host``
with build outputs): the orchestrator then accepts only the images that were built.

Why PCR8 and not PCR0/1/2 in the images' manifest: each enclave image carries the
manifest (enclaves get no input at launch), and PCR0/PCR2 hash the image, so
an image cannot contain its own PCR0/2, nor its neighbours' (stage i pins
stage i+1 and stage i+1 pins stage i: a cycle).  A stage also refuses an Init
whose measurements differ from its own manifest, so the host's manifest must
pin what the images pin.  PCR8 depends only on the signing certificate: it is
known before the build and the same for every stage.
"""

from __future__ import annotations

import json
import re
import sys

PCR_HEX = re.compile(r"^[0-9a-f]{96}$")  # SHA-384


def fail(message: str) -> None:
    print(f"nitro_manifest: error: {message}", file=sys.stderr)
    sys.exit(1)


def read_json_object(path: str) -> dict:
    """The first JSON object in a file (nitro-cli may print log lines before it)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror}")
    start = text.find("{")
    if start < 0:
        fail(f"{path}: no JSON object in it")
    try:
        obj, _ = json.JSONDecoder().raw_decode(text[start:])
    except ValueError as exc:
        fail(f"{path}: invalid JSON: {exc}")
    if not isinstance(obj, dict):
        fail(f"{path}: expected a JSON object")
    return obj


def pcr(value, where: str) -> str:
    if not isinstance(value, str) or not PCR_HEX.match(value.lower()):
        fail(f"{where}: not a SHA-384 hex PCR value: {value!r}")
    return value.lower()


def load_manifest(path: str) -> dict:
    doc = read_json_object(path)
    stages = doc.get("stages")
    if not isinstance(stages, list) or not stages:
        fail(f"{path}: no stages")
    for i, stage in enumerate(stages):
        ep = stage.get("endpoint", {}) if isinstance(stage, dict) else {}
        for port in ("control", "data_in", "data_out"):
            if not isinstance(ep.get(port), dict) or ep[port].get("type") != "vsock":
                fail(f"{path}: stage {i} {port} is not a vsock endpoint")
    return doc


def build_measurements(path: str) -> dict:
    """{"PCR0": hex, ...} from `nitro-cli build-enclave` (or `describe-eif`) output."""
    obj = read_json_object(path)
    meas = obj.get("Measurements", obj)
    out = {k: pcr(v, f"{path} {k}") for k, v in meas.items() if re.fullmatch(r"PCR\d+", k)}
    for k in ("PCR0", "PCR1", "PCR2"):
        if k not in out:
            fail(f"{path}: no {k}")
    return out


def cmd_pin(template: str, pcr8: str) -> None:
    doc = load_manifest(template)
    value = pcr(pcr8, "PCR8")
    for stage in doc["stages"]:
        stage["expected_measurements"] = {"8": value}
    json.dump(doc, sys.stdout, indent=2)
    print()


def cmd_pcr8(path: str) -> None:
    print(pcr(read_json_object(path).get("PCR8"), f"{path} PCR8"))


def cmd_measurements(pairs) -> None:
    exact = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep:
            fail(f"expected NAME=FILE, got {pair!r}")
        meas = build_measurements(path)
        print(f"{name}:")
        for k in sorted(meas, key=lambda k: int(k[3:])):
            print(f"  {k} {meas[k]}")
        exact[name] = {k[3:]: meas[k] for k in ("PCR0", "PCR1", "PCR2")}
    print("exact-image PCRs (for clients, auditors, KMS key policies, `cmlp attest verify --pcr`):")
    print(json.dumps(exact, indent=2))


def cmd_host(pinned: str, cids: str, outputs) -> None:
    doc = load_manifest(pinned)
    stages = doc["stages"]
    try:
        cid_list = [int(c) for c in cids.split(",")]
    except ValueError:
        fail(f"CIDs must be integers, got {cids!r}")
    if len(cid_list) != len(stages):
        fail(f"{len(cid_list)} CIDs for {len(stages)} stages")
    if outputs and len(outputs) != len(stages):
        fail(f"{len(outputs)} build outputs for {len(stages)} stages")
    for i, (stage, cid) in enumerate(zip(stages, cid_list, strict=True)):
        if not 4 <= cid < 2**32 - 1:
            fail(f"stage {i}: {cid} is not an enclave CID")
        stage["endpoint"]["control"]["cid"] = cid
        stage["endpoint"]["data_in"]["cid"] = cid
        pins = stage.get("expected_measurements") or {}
        if not pins:
            fail(f"stage {i}: the manifest pins no measurements (build with build_nitro.sh)")
        if outputs:
            measured = build_measurements(outputs[i])
            for idx, want in pins.items():
                got = measured.get(f"PCR{idx}")
                if got != want.lower():
                    fail(
                        f"stage {i}: the image measures PCR{idx} {got} but the manifest "
                        f"baked into it pins {want}; rebuild with scripts/build_nitro.sh"
                    )
            # the host also pins the exact image: a stage accepts an Init that pins more
            # of it than its own manifest does (never less), see StageSpec.admits_init
            for idx in ("0", "1", "2"):
                pins[idx] = measured[f"PCR{idx}"]
            stage["expected_measurements"] = pins
    client = (doc.get("host_blind") or {}).get("client")
    if isinstance(client, dict) and client.get("type") == "vsock":
        client["cid"] = cid_list[0]  # the host forwards clients to stage 0's vsock port
    json.dump(doc, sys.stdout, indent=2)
    print()


def main(argv) -> None:
    if len(argv) == 3 and argv[0] == "pin":
        cmd_pin(argv[1], argv[2])
    elif len(argv) == 2 and argv[0] == "pcr8":
        cmd_pcr8(argv[1])
    elif len(argv) >= 2 and argv[0] == "measurements":
        cmd_measurements(argv[1:])
    elif len(argv) >= 3 and argv[0] == "host":
        cmd_host(argv[1], argv[2], argv[3:])
    else:
        print(__doc__.strip(), file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main(sys.argv[1:])
