"""AMD SEV-SNP ATTESTATION_REPORT (SEV-SNP ABI spec, table "ATTESTATION_REPORT").

Exactly 1184 bytes, little-endian.  Versions 2, 3 and 5 are parsed (v3 adds
CPUID_FAM_ID/MOD_ID/STEP at 0x188; v5 adds LAUNCH/CURRENT_MIT_VECTOR at
0x1F8/0x200).  The signed region is bytes 0x000..0x29F; the ECDSA P-384
signature at 0x2A0 is r (72 bytes LE) then s (72 bytes LE).

TCB_VERSION (u64) byte layout depends on the product:
  Milan, Genoa: [bootloader, tee, 0, 0, 0, 0, snp, microcode]
  Turin:        [fmc, bootloader, tee, snp, 0, 0, 0, microcode]
Turin CHIP_ID is 8 bytes followed by 56 zero bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Optional

from cmlp.attestation.coded import fail

REPORT_SIZE = 1184
SIGNED_SIZE = 0x2A0
SIG_OFFSET = 0x2A0
SIG_COMPONENT = 72  # r and s: 72-byte little-endian fields
MIN_VERSION, MAX_VERSION = 2, 5

OFF_VERSION = 0x00
OFF_GUEST_SVN = 0x04
OFF_POLICY = 0x08
OFF_FAMILY_ID = 0x10
OFF_IMAGE_ID = 0x20
OFF_VMPL = 0x30
OFF_SIG_ALGO = 0x34
OFF_CURRENT_TCB = 0x38
OFF_PLATFORM_INFO = 0x40
OFF_KEY_INFO = 0x48
OFF_REPORT_DATA = 0x50
OFF_MEASUREMENT = 0x90
OFF_HOST_DATA = 0xC0
OFF_ID_KEY_DIGEST = 0xE0
OFF_AUTHOR_KEY_DIGEST = 0x110
OFF_REPORT_ID = 0x140
OFF_REPORT_ID_MA = 0x160
OFF_REPORTED_TCB = 0x180
OFF_CPUID_FAM = 0x188
OFF_CPUID_MOD = 0x189
OFF_CPUID_STEP = 0x18A
OFF_CHIP_ID = 0x1A0
OFF_COMMITTED_TCB = 0x1E0
OFF_CURRENT_BUILD = 0x1E8  # build, minor, major
OFF_COMMITTED_BUILD = 0x1EC
OFF_LAUNCH_TCB = 0x1F0
OFF_LAUNCH_MIT = 0x1F8  # v5
OFF_CURRENT_MIT = 0x200  # v5

SIG_ALGO_ECDSA_P384_SHA384 = 1
KEY_INFO_AUTHOR_KEY_EN = 1 << 0
KEY_INFO_MASK_CHIP_KEY = 1 << 1
SIGNING_KEY_VCEK, SIGNING_KEY_VLEK, SIGNING_KEY_NONE = 0, 1, 7

POLICY_SMT = 1 << 16
POLICY_MIGRATE_MA = 1 << 18
POLICY_DEBUG = 1 << 19
POLICY_SINGLE_SOCKET = 1 << 20

VMPL_HOST_REQUESTED = 0xFFFFFFFF

MILAN, GENOA, TURIN = "Milan", "Genoa", "Turin"
PRODUCTS = (MILAN, GENOA, TURIN)


@dataclass(frozen=True)
class TcbVersion:
    bootloader: int
    tee: int
    snp: int
    microcode: int
    fmc: Optional[int] = None  # Turin only

    @classmethod
    def decode(cls, raw: bytes, product: str) -> "TcbVersion":
        b = raw
        if product == TURIN:
            return cls(bootloader=b[1], tee=b[2], snp=b[3], microcode=b[7], fmc=b[0])
        return cls(bootloader=b[0], tee=b[1], snp=b[6], microcode=b[7])


@dataclass(frozen=True)
class SnpReport:
    raw: bytes  # the 1184 bytes exactly as received
    version: int
    guest_svn: int
    policy: int
    vmpl: int
    sig_algo: int
    key_info: int
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    chip_id: bytes
    reported_tcb_raw: bytes
    current_tcb_raw: bytes
    committed_tcb_raw: bytes
    launch_tcb_raw: bytes
    platform_info: int
    cpuid_fam: int
    cpuid_mod: int
    cpuid_step: int
    current_build: tuple  # (build, minor, major)
    launch_mit_vector: Optional[int]
    current_mit_vector: Optional[int]

    @property
    def signed_bytes(self) -> bytes:
        return self.raw[:SIGNED_SIZE]

    @property
    def signature_rs(self) -> tuple:
        sig = self.raw[SIG_OFFSET : SIG_OFFSET + 2 * SIG_COMPONENT]
        return (int.from_bytes(sig[:SIG_COMPONENT], "little"), int.from_bytes(sig[SIG_COMPONENT:], "little"))

    @property
    def signing_key(self) -> int:
        return (self.key_info >> 2) & 0x7

    @property
    def mask_chip_key(self) -> bool:
        return bool(self.key_info & KEY_INFO_MASK_CHIP_KEY)

    @property
    def cpuid_product(self) -> Optional[str]:
        """Product from CPUID_FAM_ID/MOD_ID (v3+); None when absent or unknown."""
        return product_from_cpuid(self.cpuid_fam, self.cpuid_mod)

    def reported_tcb(self, product: str) -> TcbVersion:
        return TcbVersion.decode(self.reported_tcb_raw, product)


def product_from_cpuid(fam: int, mod: int) -> Optional[str]:
    if fam == 0x19 and mod & 0xF0 == 0x00:
        return MILAN
    if fam == 0x19 and mod & 0xF0 in (0x10, 0xA0):  # Genoa, Genoa (Siena)
        return GENOA
    if fam == 0x1A and mod & 0xF0 in (0x00, 0x10):
        return TURIN
    return None


def parse_report(raw: bytes) -> SnpReport:
    """Parse exactly 1184 bytes; raises SNP_REPORT_SIZE_INVALID / SNP_REPORT_VERSION_*."""
    raw = bytes(raw)
    if len(raw) != REPORT_SIZE:
        raise fail(
            "SNP_REPORT_SIZE_INVALID",
            f"attestation report is {len(raw)} bytes (must be exactly {REPORT_SIZE})",
        )
    u32 = lambda off: struct.unpack_from("<I", raw, off)[0]  # noqa: E731
    u64 = lambda off: struct.unpack_from("<Q", raw, off)[0]  # noqa: E731
    version = u32(OFF_VERSION)
    if version > MAX_VERSION:
        raise fail(
            "SNP_REPORT_VERSION_UNSUPPORTED",
            f"report version {version} is newer than the layouts known here ({MIN_VERSION}..{MAX_VERSION})",
        )
    has_cpuid = version >= 3
    has_mit = version >= 5
    return SnpReport(
        raw=raw,
        version=version,
        guest_svn=u32(OFF_GUEST_SVN),
        policy=u64(OFF_POLICY),
        vmpl=u32(OFF_VMPL),
        sig_algo=u32(OFF_SIG_ALGO),
        key_info=u32(OFF_KEY_INFO),
        report_data=raw[OFF_REPORT_DATA : OFF_REPORT_DATA + 64],
        measurement=raw[OFF_MEASUREMENT : OFF_MEASUREMENT + 48],
        host_data=raw[OFF_HOST_DATA : OFF_HOST_DATA + 32],
        id_key_digest=raw[OFF_ID_KEY_DIGEST : OFF_ID_KEY_DIGEST + 48],
        author_key_digest=raw[OFF_AUTHOR_KEY_DIGEST : OFF_AUTHOR_KEY_DIGEST + 48],
        report_id=raw[OFF_REPORT_ID : OFF_REPORT_ID + 32],
        chip_id=raw[OFF_CHIP_ID : OFF_CHIP_ID + 64],
        reported_tcb_raw=raw[OFF_REPORTED_TCB : OFF_REPORTED_TCB + 8],
        current_tcb_raw=raw[OFF_CURRENT_TCB : OFF_CURRENT_TCB + 8],
        committed_tcb_raw=raw[OFF_COMMITTED_TCB : OFF_COMMITTED_TCB + 8],
        launch_tcb_raw=raw[OFF_LAUNCH_TCB : OFF_LAUNCH_TCB + 8],
        platform_info=u64(OFF_PLATFORM_INFO),
        cpuid_fam=raw[OFF_CPUID_FAM] if has_cpuid else 0,
        cpuid_mod=raw[OFF_CPUID_MOD] if has_cpuid else 0,
        cpuid_step=raw[OFF_CPUID_STEP] if has_cpuid else 0,
        current_build=tuple(raw[OFF_CURRENT_BUILD : OFF_CURRENT_BUILD + 3]),
        launch_mit_vector=u64(OFF_LAUNCH_MIT) if has_mit else None,
        current_mit_vector=u64(OFF_CURRENT_MIT) if has_mit else None,
    )
