# Stub for the compiled extension pyx/_llama.pyx: typed as Any for now (mypy cannot read .so
# files). The Python-facing signatures are in the .pyx (embedsignature) and tested in tests/.
from typing import Any

def __getattr__(name: str) -> Any: ...
