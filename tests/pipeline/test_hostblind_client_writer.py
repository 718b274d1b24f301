"""Stage 0's client writer: per-client order, close after the queued messages, a failed client
reported once and its later messages dropped, the other clients unaffected."""

from __future__ import annotations

import threading
import time

from cmlp.errors import Closed
from cmlp.hostblind.client_writer import ClientWriter


class FakeChannel:
    def __init__(self, fail_after=None, delay=0.0):
        self.sent: list = []
        self.closed = False
        self.fail_after = fail_after
        self.delay = delay
        self.thread_ids: set = set()

    def send(self, payload, timeout=None):
        self.thread_ids.add(threading.get_ident())
        if self.closed:
            raise Closed("send after close")
        if self.fail_after is not None and len(self.sent) >= self.fail_after:
            raise Closed("connection reset by peer")
        time.sleep(self.delay)
        self.sent.append(payload)

    def close(self):
        self.closed = True


def test_messages_keep_their_order_and_close_comes_last():
    w = ClientWriter(send_timeout=1.0)
    a, b = FakeChannel(), FakeChannel()
    for i in range(50):
        w.send(1, a, [b"a%d" % i])
        w.send(2, b, [b"b%d" % i, b"b%d'" % i])
        if i % 7 == 0:
            w.flush()  # batches of any size
    w.send(1, a, [b"end"], close=True)
    w.close(timeout=5)
    assert a.sent == [b"a%d" % i for i in range(50)] + [b"end"] and a.closed
    assert b.sent == [x for i in range(50) for x in (b"b%d" % i, b"b%d'" % i)] and not b.closed
    assert a.thread_ids and threading.get_ident() not in a.thread_ids  # written off the loop
    assert w.gone() == []


def test_a_failed_client_is_reported_once_and_its_later_messages_dropped():
    w = ClientWriter(send_timeout=1.0)
    bad, good = FakeChannel(fail_after=2), FakeChannel()
    for i in range(5):
        w.send(7, bad, [b"t%d" % i])
        w.send(8, good, [b"t%d" % i])
        w.flush()
    w.send(7, bad, [], close=True)
    w.close(timeout=5)
    assert bad.sent == [b"t0", b"t1"] and bad.closed
    assert good.sent == [b"t%d" % i for i in range(5)]
    assert w.gone() == [7]
    assert w.gone() == []


def test_the_loop_does_not_wait_for_the_writes():
    w = ClientWriter(send_timeout=1.0)
    slow = FakeChannel(delay=0.05)
    t0 = time.monotonic()
    for i in range(8):
        w.send(i, slow, [b"x"])
    assert slow.sent == []  # nothing is written before the flush
    w.flush()
    queued = time.monotonic() - t0
    w.close(timeout=5)
    assert queued < 0.05 and len(slow.sent) == 8


def test_the_step_loop_survives_a_channel_closed_under_its_poll():
    """The writer closes a channel whose write failed; the step loop may be polling that
    channel at that moment (its select then sees a closed descriptor): the generation ends,
    the loop goes on."""
    from cmlp.hostblind.batch_loop import BatchStage0Loop

    class Closing:
        def pending(self):
            raise OSError(9, "Bad file descriptor")

    class G:
        seq, ch, cl = 5, Closing(), None

    loop = object.__new__(BatchStage0Loop)
    loop.writer = ClientWriter(send_timeout=1.0)
    loop.gens = {5: G()}
    ended = []
    loop._end = lambda g: (ended.append(g.seq), loop.gens.pop(g.seq))
    loop._poll_clients()
    loop.writer.close(timeout=5)
    assert ended == [5] and not loop.gens
