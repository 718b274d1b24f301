"""Host-blind generation: the token loop closes inside the enclaves (docs/host-blind.md).

Where things are
  params.py      SamplingParams (the client contract's type), validated on both sides
  protocol.py    messages and per-sequence state machines, sans I/O
  sampling.py    next-token sampling on a logits vector (last stage)
  stopping.py    incremental decoding, stop sequences, finish reasons (stage 0)
  stage_loop.py  the stages' request loops in this mode
  batch_loop.py  the same for many clients at once (continuous batching)
  client_writer.py  stage 0's writes to its clients, overlapping the next forward
  host.py        ``cmlp serve``: lifecycle, client forwarding, relays (host, untrusted)
The client is ``cmlp.client``.
"""
