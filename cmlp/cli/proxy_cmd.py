"""``cmlp proxy``: the OpenAI-compatible API on the user's side (see cmlp/proxy)."""

from __future__ import annotations

import os
import sys

from cmlp.cli.common import add_log_level, arg_type

API_KEY_ENV = "CMLP_PROXY_API_KEY"


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"expected a positive integer, got {text}")
    return value


def _timeout(text: str) -> float:
    value = float(text)
    if not 0 < value <= 3600:
        raise ValueError(f"expected seconds in (0, 3600], got {text}")
    return value


def register(sub) -> None:
    p = sub.add_parser(
        "proxy",
        help="OpenAI-compatible HTTP API in front of an attested pipeline",
        description="Verify stage 0's attestation through the host, then serve "
        "/v1/completions, /v1/chat/completions, /v1/models and /health.",
    )
    p.add_argument(
        "--connect",
        required=True,
        metavar="HOST:PORT",
        help="address of `cmlp serve` on the (untrusted) host",
    )
    p.add_argument(
        "--manifest", required=True, metavar="PATH", help="the pipeline manifest: the pins stage 0 must match"
    )
    p.add_argument(
        "--listen",
        default="127.0.0.1:8000",
        metavar="IP:PORT",
        help="where to serve the API (default: 127.0.0.1:8000)",
    )
    p.add_argument(
        "--api-key",
        default=None,
        metavar="KEY",
        help=f"require 'Authorization: Bearer KEY' (or set {API_KEY_ENV}); "
        "required when listening beyond loopback",
    )
    p.add_argument(
        "--allow-no-api-key",
        action="store_true",
        help="serve beyond loopback without an API key (anyone who can reach "
        "the address can use the pipeline)",
    )
    p.add_argument(
        "--profile",
        choices=("development", "production"),
        default="development",
        help="production: real attestation of stage 0, pinned by the manifest (default: development)",
    )
    p.add_argument(
        "--attestation",
        choices=("mock", "nitro"),
        default=None,
        help="stage 0's attestation (default: mock in development, nitro in production)",
    )
    p.add_argument(
        "--nitro-root-pem",
        metavar="FILE",
        default=None,
        help="TESTING/STAGING ONLY: trust this Nitro root CA instead of AWS's",
    )
    p.add_argument(
        "--timeout",
        type=arg_type(_timeout, "seconds"),
        default=30.0,
        help="client network timeout in seconds (default: 30)",
    )
    p.add_argument(
        "--max-concurrent",
        type=arg_type(_positive, "count"),
        default=64,
        help="generations in flight at once; more get 503 (default: 64)",
    )
    p.add_argument(
        "--max-body-bytes",
        type=arg_type(_positive, "bytes"),
        default=1 << 20,
        help="largest request body accepted; larger get 413 (default: 1 MiB)",
    )
    add_log_level(p, default="info")
    p.set_defaults(func=run)


def run(args, backend_factory=None) -> int:
    try:
        from cmlp.proxy.app import ProxyConfig, create_app
        from cmlp.proxy.backend import ClientBackend
        from cmlp.proxy.server import ProxyServer, check_listen_policy
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.startswith("cmlp"):
            raise
        print(
            f"cmlp proxy: error: {exc.name} is not installed; install the extra: pip install 'cmlp[proxy]'",
            file=sys.stderr,
        )
        return 1
    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV) or None
    check_listen_policy(args.listen, api_key, args.allow_no_api_key)  # before any network work
    if backend_factory is None:
        extra = {}  # cmlp additions to the client contract, passed only when asked for
        if args.attestation is not None:
            extra["attestation"] = args.attestation
        if args.nitro_root_pem is not None:
            with open(args.nitro_root_pem, "rb") as f:
                extra["nitro_root_pem"] = f.read()
        backend = ClientBackend.connect(
            args.connect, args.manifest, profile=args.profile, timeout=args.timeout, **extra
        )
    else:
        backend = backend_factory(args)
    try:
        info = backend.verify()  # AttestError on a mismatch: we never start serving
        app = create_app(
            backend,
            ProxyConfig(
                api_key=api_key, max_body_bytes=args.max_body_bytes, max_concurrent=args.max_concurrent
            ),
        )
        server = ProxyServer(app, args.listen, log_level=args.log_level)
        print(
            f"cmlp proxy: stage 0 verified against {args.manifest}; serving {info.model_name} "
            f"on {server.url}/v1" + (" (API key required)" if api_key else ""),
            file=sys.stderr,
            flush=True,
        )
        server.run()
    finally:
        backend.close()
    return 0
