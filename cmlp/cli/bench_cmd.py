"""``cmlp bench serve``: drive a running ``cmlp serve`` with concurrent clients."""

from __future__ import annotations


def register(sub) -> None:
    bench = sub.add_parser("bench", help="benchmarks against a running server")
    bsub = bench.add_subparsers(dest="bench_command", metavar="BENCH")
    p = bsub.add_parser("serve", help="N concurrent clients against `cmlp serve`; prints a table")
    p.add_argument("--connect", required=True, help="HOST:PORT of cmlp serve")
    p.add_argument("--manifest", required=True, help="the host-blind manifest")
    p.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    p.add_argument("--prompt-tokens", type=int, default=16, help="prompt length (default 16)")
    p.add_argument("--max-tokens", type=int, default=64, help="tokens per client (default 64)")
    p.add_argument("--rounds", type=int, default=3, help="rounds; tokens/s is their median")
    p.add_argument("--vocab", type=int, default=50000, help="prompt ids drawn below this")
    p.add_argument("--timeout", type=float, default=120.0)
    p.set_defaults(func=run)
    bench.set_defaults(func=lambda args: (bench.print_help(), 2)[1])


def run(args) -> int:
    from cmlp.bench_serve import HEADER, merge, row, run_round
    from cmlp.client import Client

    if args.clients < 1 or args.rounds < 1 or args.prompt_tokens < 1 or args.max_tokens < 1:
        raise ValueError("--clients, --rounds, --prompt-tokens and --max-tokens must be >= 1")
    client = Client(args.connect, args.manifest, timeout=args.timeout)
    run_round(client, 1, args.prompt_tokens, 2, seed=99, vocab=args.vocab)  # warm-up
    rounds = [
        run_round(client, args.clients, args.prompt_tokens, args.max_tokens, seed=r, vocab=args.vocab)
        for r in range(args.rounds)
    ]
    print(
        f"cmlp bench serve: {args.clients} clients, prompt {args.prompt_tokens} tokens, "
        f"{args.max_tokens} tokens each, {args.rounds} rounds (tok/s: median)"
    )
    print(HEADER)
    print(row(merge(rounds)))
    return 1 if any(r.errors for r in rounds) else 0
