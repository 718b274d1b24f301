"""`cmlp proxy`: an OpenAI-compatible HTTP API on the user's machine.

Existing OpenAI clients point at the proxy on localhost; the proxy verifies stage 0's
attestation through the host-blind client (cmlp.client) and forwards each request
over its own end-to-end encrypted session, so the operator's host sees nothing.

Modules: schema (request validation), responses (JSON and SSE shapes), errors
(OpenAI error shape and status codes), bridge (client iterator -> asyncio),
backend (the one wrapper around cmlp.client.Client), app (Starlette routes),
server (uvicorn on a socket bound up front).  Needs ``pip install 'cmlp[proxy]'``.
"""
