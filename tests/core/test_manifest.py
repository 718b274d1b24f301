"""Manifest schema and validation (pipeline.md 1.1-1.8)."""

import json

import pytest

from cmlp.errors import ManifestError
from cmlp.manifest import Manifest, StageSpec
from cmlp.transport.sockets import TcpAddr, VsockAddr
from tests.helpers.pipeline import REPO, manifest_dict


def load(doc):
    return Manifest.from_json(json.dumps(doc))


def test_valid_three_stages_and_roundtrip():
    doc = manifest_dict(3, total_layers=12)
    m = load(doc)
    assert m.num_stages == 3 and [s.layer_start for s in m.stages] == [0, 4, 8]
    again = Manifest.from_json(m.dumps())
    assert again == m


@pytest.mark.parametrize(
    "name",
    [
        "manifest_1stage.json",
        "manifest_2stage.json",
        "manifest_3stage.json",
        "manifest_2stage_relay.json",
        "manifest_3stage_relay.json",
        "manifest_1stage_vsock.json",
        "manifest_2stage_vsock.json",
        "manifest_3stage_vsock.json",
    ],
)
def test_shipped_manifests_load(name):
    m = Manifest.load(REPO / "manifests" / name)
    assert m.total_layers == 12 and m.activation_spec.max_seq_len == 1024
    if "relay" in name or "vsock" in name:
        assert m.relayed_links() == list(range(m.num_stages - 1))
    else:
        assert m.relayed_links() == []
    if "vsock" in name:
        assert isinstance(m.stages[0].endpoint.control.endpoint, VsockAddr)
    else:
        assert m.stages[0].endpoint.control.endpoint == TcpAddr("127.0.0.1", 9000)


def mutate(fn, n=3, total=12):
    doc = manifest_dict(n, total_layers=total)
    fn(doc)
    return doc


@pytest.mark.parametrize(
    "fn, text",
    [
        (lambda d: d.update(stages=[]), "empty stages list"),
        (lambda d: d["stages"][1].update(stage_idx=5), "stage 1 has wrong stage_idx field: 5"),
        (lambda d: d["stages"][1].update(require_weight_hashes=True), "stage 1: require_weight_hashes"),
        (lambda d: d["stages"][1].update(layer_start=10, layer_end=5), "stage 1: invalid layer range"),
        (lambda d: d["stages"][1].update(layer_start=5), "stage 0: non-contiguous layers"),
        (lambda d: d.update(total_layers=100), "layer count mismatch: stages cover 12 layers"),
        (
            lambda d: (
                [
                    s.update(layer_start=s["layer_start"] + 10, layer_end=s["layer_end"] + 10)
                    for s in d["stages"]
                ]
                and d.update(total_layers=22)
            ),
            "layer_start must be 0",
        ),
        (
            lambda d: d["stages"][0]["endpoint"]["control"].update(addr="localhost:9000"),
            "stage 0: endpoint.control: invalid TCP address 'localhost:9000'",
        ),
        (lambda d: d["stages"][2]["endpoint"].pop("data_in"), "stage 2: endpoint: missing field 'data_in'"),
        (
            lambda d: d["stages"][1].update(expected_measurements={"0": "zz"}),
            "invalid measurements for stage 1",
        ),
        (
            lambda d: d["stages"][1].update(expected_measurements={"x": "00"}),
            "invalid measurements for stage 1",
        ),
        (lambda d: d["stages"][0].update(weight_hashes=["abc123"]), "weight_hashes[0] is not"),
        (lambda d: d["stages"][0].update(layer_end=True), "must be an integer"),
        (lambda d: d["stages"][0].update(layer_start=-1), "non-negative"),
        (lambda d: d.pop("activation_spec"), "missing field 'activation_spec'"),
        (lambda d: d["activation_spec"].update(dtype="I8"), "dtype must be one of"),
        (lambda d: d["stages"][0]["endpoint"]["control"].update(type="udp"), "unknown port type"),
        (
            lambda d: d["stages"][0]["endpoint"]["control"].update(type="vsock", cid=2**32, port=1),
            "must fit in u32",
        ),
    ],
)
def test_validation_errors_name_stage_and_field(fn, text):
    with pytest.raises(ManifestError) as e:
        load(mutate(fn))
    assert text in str(e.value)


def test_unknown_keys_ignored_and_duplicates_rejected():
    doc = manifest_dict(2)
    doc["extra"] = {"anything": 1}
    doc["stages"][0]["future_field"] = True
    load(doc)
    with pytest.raises(ManifestError, match="duplicate key"):
        Manifest.from_json('{"model_name": "a", "model_name": "b"}')


def test_measurements_and_hashes_convert():
    doc = manifest_dict(1)
    doc["stages"][0]["expected_measurements"] = {"0": "aa" * 48, "2": "bb" * 48}
    doc["stages"][0]["weight_hashes"] = ["ab" * 32]
    m = load(doc)
    pins = m.stages[0].measurements()
    assert dict(pins.items()) == {0: b"\xaa" * 48, 2: b"\xbb" * 48}


def test_stage_spec_json_field_order_matches_reference():
    m = load(manifest_dict(1))
    keys = list(m.stages[0].to_json())
    assert keys == [
        "stage_idx",
        "layer_start",
        "layer_end",
        "require_weight_hashes",
        "weight_hashes",
        "expected_measurements",
        "endpoint",
    ]
    vs = StageSpec.from_json(
        {
            "stage_idx": 0,
            "layer_start": 0,
            "layer_end": 1,
            "weight_hashes": [],
            "expected_measurements": {},
            "endpoint": {
                k: {"type": "vsock", "cid": 16, "port": 5000} for k in ("control", "data_in", "data_out")
            },
        }
    )
    assert vs.to_json()["endpoint"]["control"] == {"type": "vsock", "cid": 16, "port": 5000}


def test_missing_file_and_bad_json(tmp_path):
    with pytest.raises(ManifestError, match="file not found"):
        Manifest.load(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        Manifest.load(bad)
    with pytest.raises(ManifestError, match="out of range"):
        load(manifest_dict(2)).stage(5)
