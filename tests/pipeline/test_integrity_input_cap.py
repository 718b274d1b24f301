"""Attack 4 of issue 10: a stage's input memory is bounded per request.

Before: a stage kept every tensor of a micro-batch until END, with no cap; 768 MiB
of 16 MiB frames grew a stage from 51 MiB to 859 MiB RSS, linearly.  Now one
micro-batch may hold at most ``max_input_tensors`` tensors and
``max_batch x seq_len x row`` bytes (row = hidden_dim x max(itemsize, 4)); beyond
that the request fails with a typed error (InputLimitExceeded), what was held is
freed, and the rest of the group is read and dropped so the channel stays in sync.
"""

import numpy as np
import pytest

from cmlp import errors
from cmlp.pipeline import control as C
from cmlp.pipeline.ids import next_id
from cmlp.transport.wire import Tensor
from tests.helpers.executors import IdentityExecutor
from tests.helpers.pipeline import (
    StageThread,
    make_manifest,
    orchestrator,
    start_stage_process,
    stop_processes,
    write_manifest,
)

MIB = 1 << 20


def rss_mib(pid) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def expect_limit_error(orch, rid):
    msg = orch.links[0].recv_for(rid, 30)
    assert isinstance(msg, C.RequestError), msg
    assert "input limit exceeded" in msg.error
    return msg.error


def test_many_16_mib_frames_without_end_keep_rss_bounded(tmp_path):
    # GPT-2-small-like spec: cap = 8 x 1024 x 768 x 4 bytes = 24 MiB per micro-batch
    m = make_manifest(1, max_seq_len=1024, hidden_dim=768)
    path = write_manifest(tmp_path, m)
    proc = start_stage_process(path, 0, extra=["--persistent"], executor="identity")
    orch = orchestrator(m, infer_timeout=60)
    try:
        orch.start()
        base = rss_mib(proc.pid)
        rid = next_id()
        orch.links[0].send(C.StartRequest(rid, 1, 1024))
        frame = Tensor.from_array("h", np.ones((1, 4 * MIB), np.float32))  # 16 MiB
        peak = base
        for i in range(40):  # 640 MiB
            orch.data_in.send_tensor(frame, timeout=30)
            if i % 4 == 3:
                peak = max(peak, rss_mib(proc.pid))
        orch.data_in.send(b"END")
        error = expect_limit_error(orch, rid)
        peak = max(peak, rss_mib(proc.pid))
        assert "24 MiB" in error or str(8 * 1024 * 768 * 4) in error
        # bounded: the cap plus a frame or two in flight, nowhere near the 640 MiB sent
        print(f"stage RSS: base {base:.0f} MiB, peak {peak:.0f} MiB after 640 MiB sent")
        assert peak - base < 160, (base, peak)
        assert orch.data_out.recv(timeout=10).payload == b"ERR"
        # the stage is in sync and serves the next request normally
        x = Tensor.from_array("x", np.full((1, 768), 2.0, np.float32))
        assert orch.infer([[x]], seq_len=1).outputs[0][0].data[0, 0] == 2.0
        orch.shutdown()
    finally:
        orch.close()
        stop_processes([proc])


@pytest.mark.parametrize(
    "count, shape, seq_len",
    [
        (5, (1, 4), 16),  # one tensor too many
        (1, (1, 65), 2),  # 260 bytes > 8 x 2 x 16
    ],
)
def test_count_and_byte_caps(count, shape, seq_len):
    m = make_manifest(2, max_seq_len=16, hidden_dim=4)
    stages = [StageThread(m, i, IdentityExecutor(), persistent=True) for i in range(2)]
    orch = orchestrator(m, infer_timeout=20)
    try:
        orch.start()
        group = [Tensor.from_array(f"t{i}", np.zeros(shape, np.float32)) for i in range(count)]
        with pytest.raises(errors.RequestFailed, match="input limit exceeded"):
            orch.infer([group, [Tensor.from_array("next", np.ones((1, 4), np.float32))]], seq_len=seq_len)
        assert not orch.tainted
        ok = orch.infer([[Tensor.from_array("ok", np.ones((1, 4), np.float32))]] * 2, seq_len=1)
        assert [g[0].name for g in ok.outputs] == ["ok", "ok"]
        orch.shutdown()
    finally:
        orch.close()
        for st in stages:
            st.stop()
