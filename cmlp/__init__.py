"""cmlp: a confidential ML inference pipeline.

A model is cut into contiguous layer ranges; each range runs as a stage
process (one TEE enclave each in production).  Every hop is a SecureChannel:
an attested X25519 handshake, then ChaCha20-Poly1305 on every frame, wire
compatible with confidential-ml-transport protocol version 4.

Packages
  cmlp.transport    frame codec, handshake, record layer, SecureChannel, sockets
  cmlp.attestation  provider/verifier interfaces, mock and AWS Nitro
  cmlp.model        model registry; gpt2, llama, qwen2 families (config, shards, engines)
  cmlp.pipeline     control protocol, stage worker, orchestrator, host relay
  cmlp.manifest     the shard manifest
  cmlp.cli          console entry points
"""

__version__ = "0.1.0"
