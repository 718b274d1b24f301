"""Compatibility path: the NSM provider lives in :mod:`cmlp.attestation.nitro.nsm`.

This name is an alias of that module (same object), so imports and test
patches through either path see the same code.
"""

import sys

from cmlp.attestation.nitro import nsm as _nsm

sys.modules[__name__] = _nsm
