#!/usr/bin/env bash
# A 3-stage encrypted GPT-2 pipeline on localhost (layers 0-4, 4-8, 8-12).
# Usage: scripts/run_local_3stage.sh [text] [max_tokens]   (RELAY=1: through the host relay)
set -euo pipefail
here="$(dirname "${BASH_SOURCE[0]}")"
if [ "${RELAY:-0}" = 1 ]; then
    MANIFEST="$(cd "$here/.." && pwd)/manifests/manifest_3stage_relay.json"
else
    MANIFEST="$(cd "$here/.." && pwd)/manifests/manifest_3stage.json"
fi
export MANIFEST
exec "$here/run_local.sh" "$@"
