"""Console entry points: ``cmlp`` (subcommands), ``cmlp-stage``, ``cmlp-orch``."""
