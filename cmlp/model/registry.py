"""The model registry: which family package runs a model directory.

A family is one package under ``cmlp/model/`` exposing ``load_shard(model_dir,
layer_start, layer_end, *, threads, max_seq_len)``, which returns an object with
the ``ShardEngine`` interface of ``cmlp.model.base``, plus one ``Family`` entry
in REGISTRY below.  The family is chosen from ``config.json``: ``model_type``
first (transformers' own key), then ``architectures``.  Adding a family = one
entry + its package and kernels; the pipeline and transport only ever see
``ShardEngine``.
"""

from __future__ import annotations

import importlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from cmlp.errors import ModelError

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"


@dataclass(frozen=True)
class Family:
    name: str
    module: str  # package with load_shard(); imported only when loading
    model_types: tuple[str, ...]  # config.json model_type values
    architectures: tuple[str, ...]  # config.json architectures values
    name_hints: tuple[str, ...]  # lower-case substrings of a manifest model_name


REGISTRY = {
    f.name: f
    for f in (
        Family("gpt2", "cmlp.model.gpt2", ("gpt2",), ("GPT2LMHeadModel", "GPT2Model"), ("gpt2", "gpt-2")),
        Family(
            "llama", "cmlp.model.llama", ("llama",), ("LlamaForCausalLM", "LlamaModel"), ("llama", "smollm")
        ),
        Family("qwen2", "cmlp.model.qwen2", ("qwen2",), ("Qwen2ForCausalLM", "Qwen2Model"), ("qwen",)),
    )
}
FAMILIES = tuple(REGISTRY)


def family_module(name: str) -> ModuleType:
    if name not in REGISTRY:
        raise ModelError(f"unknown model family {name!r} (known: {', '.join(FAMILIES)})")
    return importlib.import_module(REGISTRY[name].module)


def read_config_json(model_dir) -> dict:
    """config.json as a dict; ModelError names the file on any problem."""
    path = Path(model_dir) / CONFIG_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{path}: config file not found") from None
    except (OSError, ValueError, RecursionError) as exc:
        raise ModelError(f"{path}: cannot read config: {exc}") from None
    if not isinstance(raw, dict):
        raise ModelError(f"{path}: config is not a JSON object")
    return raw


def family_of_config(raw: dict, where: str = CONFIG_FILE) -> str:
    """The family named by a parsed config.json (model_type, else architectures)."""
    model_type = raw.get("model_type")
    archs = raw.get("architectures")
    archs = [a for a in archs if isinstance(a, str)] if isinstance(archs, list) else []
    for fam in REGISTRY.values():
        if model_type in fam.model_types:
            return fam.name
    for fam in REGISTRY.values():
        if any(a in fam.architectures for a in archs):
            return fam.name
    if model_type is None and not archs and "n_embd" in raw:
        return "gpt2"  # pre-registry synthetic configs: GPT-2 keys, no model_type
    raise ModelError(
        f"{where}: unsupported model (model_type {model_type!r}, architectures "
        f"{archs}); supported families: {', '.join(FAMILIES)}"
    )


def detect_family(model_dir) -> str:
    return family_of_config(read_config_json(model_dir), str(Path(model_dir) / CONFIG_FILE))


def check_model_name(model_name: str, family: str) -> None:
    """The manifest's model_name must not name another family than config.json's.

    A name that names no family we know (a fine-tune called "my-bot") passes;
    "gpt2" over a Llama checkpoint, or "Qwen2.5-0.5B" over GPT-2 weights, is
    refused: the manifest would be attesting a model the stage does not run.
    """
    lowered = model_name.lower()
    named = [fam.name for fam in REGISTRY.values() if any(h in lowered for h in fam.name_hints)]
    if named and family not in named:
        raise ModelError(
            f"manifest model_name {model_name!r} names the {named[0]} family, "
            f"but the model directory holds a {family} model"
        )
    if not named:
        log.debug("model_name %r names no known family; config.json says %s", model_name, family)


def load_shard(
    model_dir,
    layer_start: int,
    layer_end: int,
    *,
    threads: int | None = None,
    max_seq_len: int | None = None,
    model_name: str | None = None,
):
    """Load layers [layer_start, layer_end) with the family config.json names."""
    family = detect_family(model_dir)
    if model_name is not None:
        check_model_name(model_name, family)
    return family_module(family).load_shard(
        model_dir, layer_start, layer_end, threads=threads, max_seq_len=max_seq_len
    )
