"""Compatibility alias: GPT-2's engine module moved to ``cmlp.model.gpt2.engine``.

The name stays importable (and monkeypatchable: it IS the moved module) so
that code written against the pre-registry layout keeps working.
"""

import sys

from cmlp.model.gpt2 import engine as _moved

sys.modules[__name__] = _moved
