#!/bin/sh
# Enclave entrypoint: serve the stage this image was built for (docs/nitro.md).
#
# An enclave receives no arguments or environment at launch, so everything is baked in:
# STAGE_IDX (build-arg, as ENV), the manifest (/app/manifest.json, PCR8-pinned) and the model.
#   --attestation nitro   documents from /dev/nsm; peers verified against the AWS Nitro root
#   --host-unattested     the host orchestrator has no NSM and presents an empty document
#                         (only on the host's channels; stage-to-stage links stay attested)
#   --profile production  every link to another stage must be pinned by the manifest
#   --persistent          serve one orchestrator session after another (the enclave would
#                         shut down if the process exited)
set -eu
exec cmlp-stage --manifest /app/manifest.json --stage-idx "${STAGE_IDX:?STAGE_IDX is not set}" \
    --model-dir /model --attestation nitro --host-unattested --profile production --persistent \
    --log-level "${CMLP_LOG_LEVEL:-info}"
