"""Compatibility alias: GPT-2's weights module moved to ``cmlp.model.gpt2.weights``.

The name stays importable (and monkeypatchable: it IS the moved module) so
that code written against the pre-registry layout keeps working.
"""

import sys

from cmlp.model.gpt2 import weights as _moved

sys.modules[__name__] = _moved
