"""AWS Nitro Secure Module attestation provider (transport.md section 5.5).

Inside a Nitro enclave the NSM is reached through ``/dev/nsm`` with one ioctl
carrying a CBOR request and a CBOR response.  The three parts are separate so
that encoding and decoding are testable without hardware:

* :func:`encode_attestation_request` -
  ``{"Attestation": {"user_data": bstr|null, "nonce": bstr|null, "public_key": bstr|null}}``
  (the serde encoding of ``nsm_io::Request::Attestation``);
* :class:`IoctlTransport` - the ioctl itself;
* :func:`decode_attestation_response` - ``{"Attestation": {"document": bstr}}``
  or ``{"Error": "<ErrorCode>"}``.

ioctl ABI (Linux ``include/uapi/linux/nsm.h``, and the same layout as the
out-of-tree driver used by aws-nitro-enclaves-nsm-api)::

    struct nsm_iovec { __u64 addr; __u64 len; };
    struct nsm_raw   { struct nsm_iovec request; struct nsm_iovec response; };
    #define NSM_IOCTL_RAW  _IOWR(0x0A, 0x0, struct nsm_raw)    /* = 0xC0200A00 */

Request at most 0x1000 bytes, response buffer 0x3000 bytes; the driver
writes the actual response length back into ``response.len``.  The
``_IOWR`` encoding below is the asm-generic one (x86_64 and aarch64, the
architectures Nitro enclaves run on).
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from typing import Callable, Optional

from cmlp.attestation.nitro.cbor import CborError, decode_cbor, encode_cbor
from cmlp.errors import GenerationFailed

NSM_DEVICE = "/dev/nsm"
NSM_IOCTL_MAGIC = 0x0A
NSM_REQUEST_MAX_SIZE = 0x1000
NSM_RESPONSE_MAX_SIZE = 0x3000
MAX_FIELD_SIZE = 1024  # user_data, nonce, public_key (AWS specification)

_NSM_RAW = struct.Struct("=QQQQ")  # request.addr, request.len, response.addr, response.len


def _iowr(magic: int, nr: int, size: int) -> int:
    # asm-generic/ioctl.h: dir(2 bits) << 30 | size(14) << 16 | type(8) << 8 | nr(8)
    return (3 << 30) | (size << 16) | (magic << 8) | nr


NSM_IOCTL_RAW = _iowr(NSM_IOCTL_MAGIC, 0, _NSM_RAW.size)


def encode_attestation_request(
    user_data: Optional[bytes], nonce: Optional[bytes], public_key: Optional[bytes]
) -> bytes:
    """CBOR ``Attestation`` request; each field absent -> null, else <= 1024 bytes."""
    fields = {}
    for name, value in (("user_data", user_data), ("nonce", nonce), ("public_key", public_key)):
        if value is not None:
            if not isinstance(value, (bytes, bytearray, memoryview)):
                raise GenerationFailed(f"NSM {name} must be bytes or None")
            value = bytes(value)
            if len(value) > MAX_FIELD_SIZE:
                raise GenerationFailed(f"NSM {name} is {len(value)} bytes (max {MAX_FIELD_SIZE})")
        fields[name] = value
    request = encode_cbor({"Attestation": fields})
    if len(request) > NSM_REQUEST_MAX_SIZE:
        raise GenerationFailed(f"NSM request is {len(request)} bytes (max {NSM_REQUEST_MAX_SIZE})")
    return request


def decode_attestation_response(response: bytes) -> bytes:
    """The attestation document from an NSM response, or GenerationFailed."""
    try:
        value = decode_cbor(response)
    except CborError as exc:
        raise GenerationFailed(f"NSM response is not valid CBOR: {exc}") from None
    if type(value) is not dict or len(value) != 1:
        raise GenerationFailed("NSM response is not a single-entry map")
    ((kind, body),) = value.items()
    if kind == "Error":
        raise GenerationFailed(f"NSM returned error {body!r}")
    if kind != "Attestation":
        raise GenerationFailed(f"NSM returned an unexpected {kind!r} response")
    if type(body) is not dict or type(body.get("document")) is not bytes:
        raise GenerationFailed("NSM Attestation response carries no document byte string")
    document = body["document"]
    if not document:
        raise GenerationFailed("NSM returned an empty attestation document")
    return document


class IoctlTransport:
    """Sends one raw NSM request through the device ioctl.

    ``ioctl`` and ``opener`` are injectable (defaults: ``fcntl.ioctl`` and
    ``os.open``) so the struct handling is testable without a device.
    """

    def __init__(
        self, device: str = NSM_DEVICE, *, ioctl: Optional[Callable] = None, opener: Optional[Callable] = None
    ):
        self.device = device
        self._ioctl = ioctl
        self._open = opener or os.open

    def __call__(self, request: bytes) -> bytes:
        request = bytes(request)
        if not request or len(request) > NSM_REQUEST_MAX_SIZE:
            raise GenerationFailed(f"NSM request is {len(request)} bytes (allowed 1..{NSM_REQUEST_MAX_SIZE})")
        ioctl = self._ioctl
        if ioctl is None:
            import fcntl

            ioctl = fcntl.ioctl
        try:
            fd = self._open(self.device, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            raise GenerationFailed(
                f"NSM device {self.device} not found (not running inside a Nitro enclave?)"
            ) from None
        except OSError as exc:
            raise GenerationFailed(f"cannot open NSM device {self.device}: {exc.strerror}") from None
        # The buffers must outlive the ioctl: keep them in locals until it returns.
        req_buf = ctypes.create_string_buffer(request, len(request))
        resp_buf = ctypes.create_string_buffer(NSM_RESPONSE_MAX_SIZE)
        message = bytearray(
            _NSM_RAW.pack(
                ctypes.addressof(req_buf), len(request), ctypes.addressof(resp_buf), NSM_RESPONSE_MAX_SIZE
            )
        )
        try:
            ioctl(fd, NSM_IOCTL_RAW, message, True)  # the driver writes response.len back
        except OSError as exc:
            if exc.errno == errno.EMSGSIZE:
                raise GenerationFailed("NSM rejected the request as too large") from None
            raise GenerationFailed(f"NSM ioctl on {self.device} failed: {exc.strerror or exc}") from None
        finally:
            os.close(fd)
        resp_len = _NSM_RAW.unpack(message)[3]
        if resp_len > NSM_RESPONSE_MAX_SIZE:
            raise GenerationFailed(
                f"NSM reported a {resp_len}-byte response (buffer is {NSM_RESPONSE_MAX_SIZE})"
            )
        return resp_buf.raw[:resp_len]


class NitroProvider:
    """Produces this enclave's NSM attestation document (untagged COSE_Sign1).

    ``transport`` maps request bytes to response bytes; default
    :class:`IoctlTransport` on ``device``.  A missing device raises
    GenerationFailed naming it ("/dev/nsm" by default) at ``attest`` time.
    """

    platform = "nitro"

    def __init__(self, device: str = NSM_DEVICE, *, transport: Optional[Callable[[bytes], bytes]] = None):
        self.device = device
        self.transport = transport if transport is not None else IoctlTransport(device)

    def attest(
        self, user_data: Optional[bytes], nonce: Optional[bytes], public_key: Optional[bytes]
    ) -> bytes:
        request = encode_attestation_request(user_data, nonce, public_key)
        return decode_attestation_response(self.transport(request))

    def __repr__(self) -> str:
        return f"NitroProvider(device={self.device!r})"
