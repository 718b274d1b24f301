"""TDX provider: a quote through Linux configfs-tsm (kernel >= 6.7,
Documentation/ABI/testing/configfs-tsm).

    mkdir /sys/kernel/config/tsm/report/cmt_<pid>_<n>
    write 64 bytes REPORTDATA (pk || nonce) to inblob
    read outblob (the quote), check ``provider`` is tdx_guest and that
    ``generation`` did not move between write and read (another writer)
    rmdir

File operations go through :class:`ConfigfsOps` so tests can run the
provider against a fake configfs tree.
"""

from __future__ import annotations

import itertools
import os
from typing import Optional

from cmlp.attestation.snp.provider import binding_report_data
from cmlp.attestation.tdx.document import encode_document
from cmlp.attestation.tdx.quote import MAX_QUOTE_SIZE, parse_quote
from cmlp.errors import AttestError, GenerationFailed

TSM_REPORT_ROOT = "/sys/kernel/config/tsm/report"
_COUNTER = itertools.count()


class ConfigfsOps:
    """Plain file operations (configfs creates the attribute files on mkdir)."""

    def mkdir(self, path: str) -> None:
        os.mkdir(path)

    def rmdir(self, path: str) -> None:
        os.rmdir(path)

    def write(self, path: str, data: bytes) -> None:
        with open(path, "wb", buffering=0) as f:
            f.write(data)

    def read(self, path: str, limit: int) -> bytes:
        with open(path, "rb") as f:
            return f.read(limit + 1)


class TdxProvider:
    platform = "tdx"

    def __init__(self, root: str = TSM_REPORT_ROOT, *, ops: Optional[ConfigfsOps] = None):
        self.root = root
        self.ops = ops or ConfigfsOps()

    def attest(self, user_data, nonce, public_key) -> bytes:
        report_data = binding_report_data(public_key, nonce, user_data)
        if not os.path.isdir(self.root):
            raise GenerationFailed(
                f"configfs-tsm report directory {self.root} not found "
                "(needs Linux >= 6.7 in a TDX guest, configfs mounted)"
            )
        entry = os.path.join(self.root, f"cmt_{os.getpid()}_{next(_COUNTER)}")
        try:
            self.ops.mkdir(entry)
        except OSError as exc:
            raise GenerationFailed(f"cannot create {entry}: {exc.strerror or exc}") from None
        try:
            provider = self._text(entry, "provider")
            if provider not in ("tdx_guest", ""):
                raise GenerationFailed(f"configfs-tsm provider is {provider!r}, not tdx_guest")
            self.ops.write(os.path.join(entry, "inblob"), report_data)
            gen_before = self._text(entry, "generation")
            quote = self.ops.read(os.path.join(entry, "outblob"), MAX_QUOTE_SIZE)
            gen_after = self._text(entry, "generation")
            if gen_before != gen_after:
                raise GenerationFailed(
                    "configfs-tsm generation changed while reading the quote (another writer raced us)"
                )
        except OSError as exc:
            raise GenerationFailed(f"configfs-tsm I/O failed: {exc.strerror or exc}") from None
        finally:
            try:
                self.ops.rmdir(entry)
            except OSError:
                pass
        if len(quote) > MAX_QUOTE_SIZE:
            raise GenerationFailed(f"quote is larger than {MAX_QUOTE_SIZE} bytes")
        try:
            parsed = parse_quote(quote)
        except AttestError as exc:
            raise GenerationFailed(f"configfs-tsm returned an unusable quote: {exc}") from None
        if parsed.td.reportdata != report_data:
            raise GenerationFailed("the quote's REPORTDATA is not what was written to inblob")
        return encode_document(parsed.raw)

    def _text(self, entry: str, name: str) -> str:
        path = os.path.join(entry, name)
        if not os.path.exists(path):
            return ""
        return self.ops.read(path, 64).decode("ascii", "replace").strip()
