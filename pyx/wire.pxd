# cython: language_level=3
"""Wire constants and byte-order helpers shared by the Cython modules.

Everything here is ``cdef inline``: cimporting this file compiles the helpers
into each extension and creates no runtime module dependency.

Byte order traps (transport.md section 10): the frame header, the hello
``doc_len`` and the AEAD nonce/AAD sequence are big-endian; the tensor
sub-header is little-endian.
"""

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

cdef enum:
    HEADER_SIZE = 13
    MAGIC = 0xCF4D
    PROTOCOL_VERSION = 4
    MAX_PAYLOAD_SIZE = 33554432          # 32 MiB hard cap (section 1.5)
    TAG_SIZE = 16
    KEY_SIZE = 32
    SID_SIZE = 32
    NONCE_SIZE = 12
    AAD_SIZE = 43
    MAX_DOCUMENT_SIZE = 65536            # attestation document in a hello (section 3.3)

    MSG_HELLO = 0x01
    MSG_DATA = 0x02
    MSG_ERROR = 0x03
    MSG_HEARTBEAT = 0x04
    MSG_SHUTDOWN = 0x05
    MSG_TENSOR = 0x06

    FLAG_ENCRYPTED = 0x01
    FLAG_TENSOR_PAYLOAD = 0x02

    MAX_TENSOR_DIMS = 32
    MAX_TENSOR_NAME = 65535
    N_DTYPES = 8

# header_check results, in the order of transport.md section 1.6
cdef enum:
    HDR_OK = 0
    HDR_BAD_MAGIC = 1
    HDR_BAD_VERSION = 2
    HDR_BAD_TYPE = 3
    HDR_TOO_LARGE = 4


cdef inline uint16_t load_be16(const uint8_t* p) noexcept nogil:
    return (<uint16_t>p[0] << 8) | p[1]


cdef inline uint32_t load_be32(const uint8_t* p) noexcept nogil:
    return ((<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16)
            | (<uint32_t>p[2] << 8) | <uint32_t>p[3])


cdef inline void store_be32(uint8_t* p, uint32_t v) noexcept nogil:
    p[0] = <uint8_t>(v >> 24)
    p[1] = <uint8_t>(v >> 16)
    p[2] = <uint8_t>(v >> 8)
    p[3] = <uint8_t>v


cdef inline void store_be64(uint8_t* p, uint64_t v) noexcept nogil:
    cdef int i
    for i in range(8):
        p[i] = <uint8_t>(v >> (56 - 8 * i))


cdef inline uint16_t load_le16(const uint8_t* p) noexcept nogil:
    return <uint16_t>p[0] | (<uint16_t>p[1] << 8)


cdef inline uint32_t load_le32(const uint8_t* p) noexcept nogil:
    return (<uint32_t>p[0] | (<uint32_t>p[1] << 8)
            | (<uint32_t>p[2] << 16) | (<uint32_t>p[3] << 24))


cdef inline void store_le16(uint8_t* p, uint16_t v) noexcept nogil:
    p[0] = <uint8_t>v
    p[1] = <uint8_t>(v >> 8)


cdef inline void store_le32(uint8_t* p, uint32_t v) noexcept nogil:
    p[0] = <uint8_t>v
    p[1] = <uint8_t>(v >> 8)
    p[2] = <uint8_t>(v >> 16)
    p[3] = <uint8_t>(v >> 24)


cdef inline bint known_msg_type(uint8_t t) noexcept nogil:
    return MSG_HELLO <= t <= MSG_TENSOR


cdef inline int header_check(const uint8_t* p) noexcept nogil:
    """Validate a 13-byte header in the order of section 1.6 (steps 2-5)."""
    if load_be16(p) != MAGIC:
        return HDR_BAD_MAGIC
    if p[2] != PROTOCOL_VERSION:
        return HDR_BAD_VERSION
    if not known_msg_type(p[3]):
        return HDR_BAD_TYPE
    if load_be32(p + 9) > MAX_PAYLOAD_SIZE:
        return HDR_TOO_LARGE
    return HDR_OK


cdef inline void header_store(uint8_t* p, uint8_t msg_type, uint8_t flags,
                              uint32_t sequence, uint32_t payload_len) noexcept nogil:
    p[0] = 0xCF
    p[1] = 0x4D
    p[2] = PROTOCOL_VERSION
    p[3] = msg_type
    p[4] = flags
    store_be32(p + 5, sequence)
    store_be32(p + 9, payload_len)


cdef inline int dtype_size(int code) noexcept nogil:
    """Element size of a dtype code (section 2.2), or 0 when unknown."""
    if code == 0 or code == 4 or code == 7:   # F32, I32, U32
        return 4
    if code == 1 or code == 5:                # F64, I64
        return 8
    if code == 2 or code == 3:                # F16, BF16
        return 2
    if code == 6:                             # U8
        return 1
    return 0


cdef inline Py_ssize_t tensor_pad(Py_ssize_t header_len) noexcept nogil:
    return (8 - header_len % 8) % 8
