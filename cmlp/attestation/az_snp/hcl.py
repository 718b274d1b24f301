"""Azure HCL (IGVM) attestation report, little-endian throughout:

  0x000 header (32): "HCLA", version, report_size, request_type, status, 12 reserved
  0x020 hardware report area (1184): the SNP ATTESTATION_REPORT (or a TDREPORT)
  0x4C0 runtime header (20): data_size, version, report_type (2 SNP, 4 TDX),
        hash_type (1 = SHA-256), variable_data_size
  0x4D4 VarData (variable_data_size bytes): UTF-8 JSON with keys, vm-configuration,
        user-data

The vTPM NV index returns the report zero-padded (2048 or 2600 bytes): bytes
after VarData must be zero.  report_size must cover exactly header + hardware
report + runtime header + VarData, and data_size = 20 + variable_data_size.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Optional

from cmlp.attestation.coded import fail

HCL_SIGNATURE = b"HCLA"
HEADER_SIZE = 32
HW_REPORT_OFFSET = 0x20
HW_REPORT_SIZE = 1184
RUNTIME_OFFSET = 0x4C0
RUNTIME_HEADER_SIZE = 20
VARDATA_OFFSET = 0x4D4
REPORT_TYPE_SNP, REPORT_TYPE_TDX = 2, 4
HASH_TYPE_SHA256 = 1
MAX_HCL_SIZE = 16384
MAX_VARDATA = 8192


@dataclass(frozen=True)
class HclReport:
    raw: bytes
    version: int
    report_type: int
    hash_type: int
    hw_report: bytes  # 1184 bytes
    var_data: bytes  # exact bytes (hashed as received)
    var_json: dict

    def user_data(self) -> Optional[bytes]:
        """VarData ``user-data`` hex-decoded (None when absent)."""
        value = self.var_json.get("user-data")
        if value is None:
            return None
        if not isinstance(value, str):
            raise fail("AZSNP_USER_DATA_INVALID", "VarData user-data is not a string")
        try:
            return bytes.fromhex(value)
        except ValueError:
            raise fail("AZSNP_USER_DATA_INVALID", "VarData user-data is not hex") from None


def parse_hcl(raw: bytes) -> HclReport:
    raw = bytes(raw)
    if len(raw) > MAX_HCL_SIZE:
        raise fail("AZSNP_HCL_MALFORMED", f"HCL report is {len(raw)} bytes (max {MAX_HCL_SIZE})")
    if len(raw) < VARDATA_OFFSET:
        raise fail(
            "AZSNP_HCL_MALFORMED", f"HCL report is {len(raw)} bytes (at least {VARDATA_OFFSET} needed)"
        )
    if raw[:4] != HCL_SIGNATURE:
        raise fail("AZSNP_HCL_MALFORMED", "HCL report does not start with 'HCLA'")
    version, report_size, _request_type, _status = struct.unpack_from("<IIII", raw, 4)
    data_size, _rt_version, report_type, hash_type, var_size = struct.unpack_from(
        "<IIIII", raw, RUNTIME_OFFSET
    )
    if var_size > MAX_VARDATA or VARDATA_OFFSET + var_size > len(raw):
        raise fail(
            "AZSNP_HCL_MALFORMED", f"VarData claims {var_size} bytes, {len(raw) - VARDATA_OFFSET} present"
        )
    if data_size != RUNTIME_HEADER_SIZE + var_size:
        raise fail("AZSNP_HCL_MALFORMED", f"runtime data_size {data_size} != 20 + VarData size {var_size}")
    if report_size != VARDATA_OFFSET + var_size:
        raise fail(
            "AZSNP_HCL_MALFORMED", f"report_size {report_size} != {VARDATA_OFFSET} + VarData size {var_size}"
        )
    end = VARDATA_OFFSET + var_size
    if any(raw[end:]):
        raise fail("AZSNP_HCL_MALFORMED", "non-zero bytes after VarData (only zero padding)")
    var_data = raw[VARDATA_OFFSET:end]
    try:
        var_json = json.loads(var_data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise fail("AZSNP_VARDATA_INVALID", "VarData is not UTF-8 JSON") from None
    if not isinstance(var_json, dict):
        raise fail("AZSNP_VARDATA_INVALID", "VarData is not a JSON object")
    return HclReport(
        raw=raw,
        version=version,
        report_type=report_type,
        hash_type=hash_type,
        hw_report=raw[HW_REPORT_OFFSET : HW_REPORT_OFFSET + HW_REPORT_SIZE],
        var_data=var_data,
        var_json=var_json,
    )
