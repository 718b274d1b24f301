"""`cmlp manifest init --host-blind`: the generated manifests close the ring and serve."""

import json

import numpy as np
import pytest

from cmlp.client import Client, SamplingParams, TokenEvent
from cmlp.manifest import Manifest
from cmlp.manifest_gen import generate
from cmlp.model import Gpt2Shard
from cmlp.model.synthetic import init_model
from cmlp.pipeline.gpt2 import Gpt2Executor, greedy_token
from cmlp.transport.sockets import TcpAddr, VsockAddr
from tests.helpers.hostblind_helpers import served
from tests.helpers.pipeline import free_ports


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return init_model(tmp_path_factory.mktemp("tiny"), preset="tiny")


@pytest.mark.parametrize(
    "layout, splits", [("direct", [4]), ("direct", [2, 2]), ("relay", [1, 2, 1]), ("vsock", [2, 2])]
)
def test_generated_host_blind_layouts(tiny, layout, splits):
    m = generate(
        tiny,
        splits,
        layout=layout,
        base_port=5000 if layout == "vsock" else 9000,
        with_hashes=False,
        host_blind=True,
    )
    assert m.host_blind
    n = len(splits)
    if layout == "vsock":
        assert m.client_endpoint.endpoint == VsockAddr(0, 5003)
        assert m.feedback_relayed() == (n > 1)
    else:
        assert m.client_endpoint.endpoint == TcpAddr("127.0.0.1", 9002)
        assert m.feedback_relayed() == (layout == "relay" and n > 1)
    Manifest.from_json(m.dumps())  # what it writes loads back
    plain = generate(tiny, splits, layout=layout, with_hashes=False)
    assert "host_blind" not in json.loads(plain.dumps())


def test_a_generated_manifest_with_weight_hashes_serves_greedy_ids(tiny):
    (base,) = free_ports(1)
    # the layout takes base .. base + 120: all below the ephemeral range (32768+), where an
    # outgoing connection (or a free-port test running alongside) may hold any port
    base = 20000 + base % 12000
    m = generate(tiny, [2, 2], layout="relay", base_port=base, host_blind=True)
    assert all(s.require_weight_hashes and s.weight_hashes for s in m.stages)
    prompt = [464, 3139, 286, 4881, 318]
    shard = Gpt2Shard.load(tiny, 0, 4, threads=1)
    want, logits = [], shard.forward(np.asarray([prompt], np.uint32))
    for _ in range(8):
        want.append(greedy_token(logits[0]))
        logits = shard.forward(np.asarray([[want[-1]]], np.uint32))
    with served(m, [Gpt2Executor(tiny, threads=1) for _ in range(2)]) as (server, _):
        events = list(Client(str(server.address), m).generate(prompt, SamplingParams(max_tokens=8)))
    assert [e.token_id for e in events if isinstance(e, TokenEvent)] == want
