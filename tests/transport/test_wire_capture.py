"""The hostile host's view: everything the relay forwards during a 2-stage generation.

The host relay records every byte it moves between the two enclaves.  Neither
the prompt's token ids nor any 16-byte window of the hidden-state tensor may
appear in it, the sealed payloads must look random (> 7.9 bits/byte), and the
AEAD overhead is exactly one 16-byte tag per frame plus the handshake.
"""

import math
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from cmlp.model import Gpt2Shard
from cmlp.model.synthetic import init_model
from cmlp.pipeline.gpt2 import Gpt2Executor, generate
from cmlp.tokenizer import load_tokenizer
from tests.helpers.pipeline import make_manifest, running_pipeline

PROMPT = "The capital of France is"


def frames(stream: bytes):
    pos = 0
    while pos + 13 <= len(stream):
        msg_type, flags = stream[pos + 3], stream[pos + 4]
        n = struct.unpack_from(">I", stream, pos + 9)[0]
        yield msg_type, flags, stream[pos + 13 : pos + 13 + n]
        pos += 13 + n
    assert pos == len(stream), "capture does not end on a frame boundary"


def entropy(data: bytes) -> float:
    counts = Counter(data)
    return -sum(c / len(data) * math.log2(c / len(data)) for c in counts.values())


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    model = init_model(tmp_path_factory.mktemp("tiny"), preset="tiny")
    prefix = str(tmp_path_factory.mktemp("capture") / "relay")
    m = make_manifest(2, splits=[(0, 2), (2, 4)], relay=True, max_seq_len=1024, hidden_dim=64)
    ids = load_tokenizer().encode(PROMPT)
    with running_pipeline(
        m, [Gpt2Executor(model, threads=1) for _ in range(2)], relay_capture_prefix=prefix
    ) as (orch, _):
        gen = generate(orch, ids, 40)
        orch.shutdown()
    hidden = Gpt2Shard.load(model, 0, 2, threads=1).forward(np.asarray([ids], np.uint32)).copy()
    down = Path(prefix + "0_down.bin").read_bytes()
    up = Path(prefix + "0_up.bin").read_bytes()
    return {"ids": ids, "hidden": hidden, "down": down, "up": up, "gen": gen}


def test_prompt_ids_and_activations_never_appear(capture):
    wire = capture["down"] + capture["up"]
    assert len(capture["down"]) > 10_000
    ids_le = struct.pack(f"<{len(capture['ids'])}I", *capture["ids"])
    assert ids_le not in wire
    for needle in (b"input_ids", b"hidden_states", b"cache_clear", b"END", PROMPT.encode()):
        assert needle not in wire
    raw = capture["hidden"].tobytes()
    windows = {raw[i : i + 16] for i in range(len(raw) - 15)}
    hits = [w for w in windows if w in wire]
    assert not hits, f"{len(hits)} plaintext activation windows leaked"


def test_sealed_payloads_look_random(capture):
    sealed = [p for t, f, p in frames(capture["down"]) if t != 0x01]
    assert all(f & 0x01 for t, f, p in frames(capture["down"]) if t != 0x01)
    data = b"".join(sealed)
    h = entropy(data)
    print(f"\nrelay capture: {len(capture['down'])} B downstream, payload entropy {h:.4f} bits/byte")
    assert h > 7.9


def test_handshake_and_aead_overhead(capture):
    down = list(frames(capture["down"]))
    up = list(frames(capture["up"]))
    hellos = [f for f in down + up if f[0] == 0x01]
    assert len(hellos) == 3  # msg 1, msg 2, msg 3 pass through
    sealed = [f for f in down + up if f[0] != 0x01]
    tensors = [f for f in sealed if f[0] == 0x06]
    assert all(f[1] == 0x03 for f in tensors) and len(tensors) == 40 + 1  # + the sentinel
    handshake = sum(13 + len(p) for _, _, p in hellos)
    tags = 16 * len(sealed)
    plaintext_frames = sum(13 + len(p) - 16 for _, _, p in sealed)
    total = len(capture["down"]) + len(capture["up"])
    assert total == handshake + plaintext_frames + tags
    print(
        f"\nAEAD overhead: {tags} B of tags over {plaintext_frames} B of plaintext frames "
        f"({100 * tags / plaintext_frames:.2f} %), handshake {handshake} B, "
        f"{len(sealed)} sealed frames"
    )
