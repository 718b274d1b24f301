"""Compatibility alias: GPT-2's config module moved to ``cmlp.model.gpt2.config``.

The name stays importable (and monkeypatchable: it IS the moved module) so
that code written against the pre-registry layout keeps working.
"""

import sys

from cmlp.model.gpt2 import config as _moved

sys.modules[__name__] = _moved
