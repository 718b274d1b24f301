"""The proxy's one view of the pipeline: a ``cmlp.client.Client`` and its types.

Everything the HTTP side needs from the client goes through ``ClientBackend``, so
the app can be tested against any object that implements the client contract
(docs: /work/brief/client_contract.md, mirrored in cmlp/client.py): ``model_info()``,
``generate(prompt, params)`` yielding TokenEvents then one Finished, ``close()``.
"""

from __future__ import annotations

import importlib

from cmlp.errors import PipelineError

# A one-token prompt for the attestation probe when the client has no verify() of its own.
_PROBE_PROMPT = "\n"


class ClientBackend:
    """Wraps a client object plus its SamplingParams and Finished classes."""

    def __init__(self, client, *, sampling_params, finished):
        self.client = client
        self._params = sampling_params
        self._finished = finished
        self.info = None  # ModelInfo, set by verify()

    @classmethod
    def connect(
        cls, connect: str, manifest, *, profile: str = "development", timeout: float = 30.0, **client_kwargs
    ) -> ClientBackend:
        """The real thing: cmlp.client.Client talking to `cmlp serve` at ``connect``."""
        try:
            mod = importlib.import_module("cmlp.client")
        except ModuleNotFoundError as exc:
            if exc.name != "cmlp.client":
                raise
            raise PipelineError(
                "this cmlp has no host-blind client (cmlp.client); `cmlp proxy` needs it"
            ) from None
        client = mod.Client(connect, manifest, profile=profile, timeout=timeout, **client_kwargs)
        return cls(client, sampling_params=mod.SamplingParams, finished=mod.Finished)

    def verify(self):
        """Attest stage 0 against the manifest before serving anything; returns ModelInfo.

        Uses the client's own ``verify()`` when it has one; otherwise opens one
        generation (which attests stage 0 before sending the prompt), takes its first
        event and cancels it: a proxy that starts has seen the whole pipeline produce a
        token.  Raises the client's AttestError subclasses on a mismatch.
        """
        verify = getattr(self.client, "verify", None)
        if callable(verify):
            verify()
        else:
            events = self.client.generate(_PROBE_PROMPT, self.params(max_tokens=1))
            try:
                next(iter(events), None)
            finally:
                close = getattr(events, "close", None)
                if close is not None:
                    close()
        self.info = self.client.model_info()
        return self.info

    def model_info(self):
        if self.info is None:
            self.info = self.client.model_info()
        return self.info

    def count_tokens(self, text: str) -> int | None:
        """Prompt length in tokens when the client exposes its tokenizer, else None."""
        tok = getattr(self.client, "tokenizer", None)
        if tok is None:
            return None
        return len(tok.encode(text))

    def params(self, **kw):
        return self._params(**kw)

    def is_finished(self, event) -> bool:
        return isinstance(event, self._finished)

    def generate(self, prompt, params):
        return self.client.generate(prompt, params)

    def close(self) -> None:
        self.client.close()
