"""Compatibility alias: GPT-2's synthetic module moved to ``cmlp.model.gpt2.synthetic``.

The name stays importable (and monkeypatchable: it IS the moved module) so
that code written against the pre-registry layout keeps working.
"""

import sys

from cmlp.model.gpt2 import synthetic as _moved

sys.modules[__name__] = _moved
