# cython: language_level=3
"""Frame codec: the 13-byte header, the tensor sub-header, and a streaming decoder.

This module is sans-I/O except for ``FrameDecoder.fill``, which reads from a
socket file descriptor straight into the decoder's buffer with the GIL
released.  Validation order and error kinds follow transport.md sections 1.6
and 2.5 exactly; every length that comes from the peer is checked before it
is used to allocate or index.
"""

from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE, PyBUF_WRITABLE
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING
from cpython.exc cimport PyErr_CheckSignals
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from libc.errno cimport ECONNRESET, EPIPE, ENOTCONN
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy, memmove, memset

from wire cimport *
from sysio cimport *

from cmlp import errors as _errors

cdef extern from "string.h" nogil:
    void explicit_bzero(void* s, size_t n)

cdef extern from "string.h" nogil:
    char* strerror(int errnum)

# Python-visible constants.  wire.pxd is their one definition: cmlp/transport/wire.py
# takes its names from WIRE, so the Python side cannot drift from the compiled codec.
MAX_PAYLOAD = MAX_PAYLOAD_SIZE
HANDSHAKE_MAX_BUFFERED = MAX_DOCUMENT_SIZE + HEADER_SIZE + 1024   # 66 573 (section 1.5)
GROWTH_STEP = 65536                          # allocation hardening (section 1.6 step 3)
WIRE = {
    "HEADER_SIZE": HEADER_SIZE, "MAGIC": MAGIC, "PROTOCOL_VERSION": PROTOCOL_VERSION,
    "MAX_PAYLOAD_SIZE": MAX_PAYLOAD_SIZE, "TAG_SIZE": TAG_SIZE,
    "MAX_DOCUMENT_SIZE": MAX_DOCUMENT_SIZE, "HANDSHAKE_MAX_BUFFERED": HANDSHAKE_MAX_BUFFERED,
    "MSG_HELLO": MSG_HELLO, "MSG_DATA": MSG_DATA, "MSG_ERROR": MSG_ERROR,
    "MSG_HEARTBEAT": MSG_HEARTBEAT, "MSG_SHUTDOWN": MSG_SHUTDOWN, "MSG_TENSOR": MSG_TENSOR,
    "FLAG_ENCRYPTED": FLAG_ENCRYPTED, "FLAG_TENSOR_PAYLOAD": FLAG_TENSOR_PAYLOAD,
}

# Buffered frames start at this offset after a compaction so that the payload
# (13 bytes later) and the tensor data inside it are 8-byte aligned: numpy
# views over received tensors are then aligned in the common case.
cdef enum:
    BASE = 3


# ---------------------------------------------------------------------------
# Header
# ---------------------------------------------------------------------------
cdef raise_header_error(int code, const uint8_t* p):
    if code == HDR_BAD_MAGIC:
        raise _errors.InvalidMagic(load_be16(p))
    if code == HDR_BAD_VERSION:
        raise _errors.UnsupportedVersion(p[2])
    if code == HDR_BAD_TYPE:
        raise _errors.UnknownMessageType(p[3])
    raise _errors.PayloadTooLarge(load_be32(p + 9), MAX_PAYLOAD_SIZE)


def encode_header(int msg_type, int flags, uint32_t sequence, Py_ssize_t payload_len):
    """The 13 header bytes.  Raises on an unknown type or an oversized payload."""
    cdef uint8_t out[HEADER_SIZE]
    if not (0 <= msg_type <= 255) or not known_msg_type(<uint8_t>msg_type):
        raise _errors.UnknownMessageType(msg_type & 0xFF)
    if not (0 <= flags <= 255):
        raise ValueError("flags must fit in one byte")
    if payload_len < 0 or payload_len > MAX_PAYLOAD_SIZE:
        raise _errors.PayloadTooLarge(payload_len, MAX_PAYLOAD_SIZE)
    header_store(out, <uint8_t>msg_type, <uint8_t>flags, sequence, <uint32_t>payload_len)
    return PyBytes_FromStringAndSize(<char*>out, HEADER_SIZE)


def decode_header(data):
    """Parse and validate a header: ``(msg_type, flags, sequence, payload_len)``.

    Returns None when fewer than 13 bytes are given (need more data).
    """
    cdef Py_buffer pb
    cdef const uint8_t* p
    cdef int code
    PyObject_GetBuffer(data, &pb, PyBUF_SIMPLE)
    try:
        if pb.len < HEADER_SIZE:
            return None
        p = <const uint8_t*>pb.buf
        code = header_check(p)
        if code != HDR_OK:
            raise_header_error(code, p)
        return (p[3], p[4], load_be32(p + 5), load_be32(p + 9))
    finally:
        PyBuffer_Release(&pb)


def encode_frame(int msg_type, int flags, uint32_t sequence, payload=b""):
    """Header + payload as one bytes object (plaintext frames, tests, tools)."""
    cdef Py_buffer pb
    PyObject_GetBuffer(payload, &pb, PyBUF_SIMPLE)
    try:
        if pb.len > MAX_PAYLOAD_SIZE:
            raise _errors.PayloadTooLarge(pb.len, MAX_PAYLOAD_SIZE)
        if not (0 <= msg_type <= 255) or not known_msg_type(<uint8_t>msg_type):
            raise _errors.UnknownMessageType(msg_type & 0xFF)
        if not (0 <= flags <= 255):
            raise ValueError("flags must fit in one byte")
        out = PyBytes_FromStringAndSize(NULL, HEADER_SIZE + pb.len)
        header_store(<uint8_t*>PyBytes_AS_STRING(out), <uint8_t>msg_type, <uint8_t>flags,
                     sequence, <uint32_t>pb.len)
        memcpy(PyBytes_AS_STRING(out) + HEADER_SIZE, pb.buf, pb.len)
        return out
    finally:
        PyBuffer_Release(&pb)


# ---------------------------------------------------------------------------
# Tensor sub-header (section 2)
# ---------------------------------------------------------------------------
cdef int checked_nbytes(tuple shape, int dtype_code, uint64_t* out) except -1:
    """product(shape) * element size, with ShapeOverflow on any u64 overflow."""
    cdef uint64_t total = <uint64_t>dtype_size(dtype_code)
    cdef uint64_t d
    for dim in shape:
        if dim < 0 or dim > 0xFFFFFFFF:
            raise _errors.ShapeOverflow(f"tensor dimension {dim} does not fit in u32")
        d = <uint64_t>dim
        if d != 0 and total > 0xFFFFFFFFFFFFFFFF // d:
            raise _errors.ShapeOverflow()
        total *= d
    out[0] = total
    return 0


cdef Py_ssize_t tensor_payload_size_c(Py_ssize_t name_len, Py_ssize_t ndims,
                                      Py_ssize_t data_len) noexcept:
    cdef Py_ssize_t h = 5 + 4 * ndims + name_len
    return h + tensor_pad(h) + data_len


def tensor_payload_size(name, int dtype_code, shape, Py_ssize_t data_len):
    """Bytes of a tensor payload (sub-header + padding + data)."""
    cdef Py_ssize_t name_len = len(name.encode("utf-8") if isinstance(name, str) else name)
    return tensor_payload_size_c(name_len, len(shape), data_len)


cdef Py_ssize_t encode_tensor_c(uint8_t* out, Py_ssize_t room, bytes name_b, int dtype_code,
                                tuple shape, const uint8_t* data, Py_ssize_t data_len) except -1:
    """Write sub-header, zero padding and data at ``out``; returns bytes written."""
    cdef uint64_t expected
    cdef Py_ssize_t ndims = len(shape)
    cdef Py_ssize_t name_len = len(name_b)
    cdef Py_ssize_t h, pad, total, i
    if dtype_size(dtype_code) == 0:
        raise _errors.UnknownDType(dtype_code & 0xFF)
    # encode order of section 2.5: size, dims, name
    checked_nbytes(shape, dtype_code, &expected)
    if expected != <uint64_t>data_len:
        raise _errors.TensorDataSizeMismatch(expected, data_len)
    if ndims > MAX_TENSOR_DIMS:
        raise _errors.ShapeOverflow(f"{ndims} dimensions exceed the maximum of 32")
    if name_len > MAX_TENSOR_NAME:
        raise _errors.TensorNameTooLong(name_len)
    h = 5 + 4 * ndims + name_len
    pad = tensor_pad(h)
    total = h + pad + data_len
    if total > room:
        raise _errors.PayloadTooLarge(total, room)
    store_le16(out, <uint16_t>ndims)
    out[2] = <uint8_t>dtype_code
    for i in range(ndims):
        store_le32(out + 3 + 4 * i, <uint32_t>shape[i])
    store_le16(out + 3 + 4 * ndims, <uint16_t>name_len)
    memcpy(out + 5 + 4 * ndims, <const char*>name_b, name_len)
    memset(out + h, 0, pad)
    if data_len:
        memcpy(out + h + pad, data, data_len)
    return total


def encode_tensor_into(buf, Py_ssize_t offset, name, int dtype_code, shape, data):
    """Encode a tensor payload into ``buf[offset:]``; returns the end offset."""
    cdef Py_buffer out, src
    cdef bytes name_b = name.encode("utf-8") if isinstance(name, str) else bytes(name)
    cdef tuple shp = tuple(shape)
    cdef Py_ssize_t n
    PyObject_GetBuffer(buf, &out, PyBUF_WRITABLE)
    try:
        PyObject_GetBuffer(data, &src, PyBUF_SIMPLE)
        try:
            if offset < 0 or offset > out.len:
                raise ValueError("offset outside the buffer")
            n = encode_tensor_c(<uint8_t*>out.buf + offset, out.len - offset, name_b, dtype_code,
                                shp, <const uint8_t*>src.buf, src.len)
        finally:
            PyBuffer_Release(&src)
    finally:
        PyBuffer_Release(&out)
    return offset + n


def encode_tensor(name, int dtype_code, shape, data):
    """A complete tensor payload as bytes (tests and plaintext helpers)."""
    size = tensor_payload_size(name, dtype_code, tuple(shape), memoryview(data).nbytes)
    out = bytearray(size)
    encode_tensor_into(out, 0, name, dtype_code, shape, data)
    return bytes(out)


def decode_tensor_header(payload):
    """Validate a tensor payload (section 2.5 order) without copying its data.

    Returns ``(name, dtype_code, shape, data_offset, data_len)``.
    """
    cdef Py_buffer pb
    cdef const uint8_t* p
    cdef Py_ssize_t n, ndims, name_len, h, pad, i, off
    cdef int code
    cdef uint64_t expected
    PyObject_GetBuffer(payload, &pb, PyBUF_SIMPLE)
    try:
        p = <const uint8_t*>pb.buf
        n = pb.len
        if n < 3:
            raise _errors.IncompleteTensorHeader()
        ndims = load_le16(p)
        if ndims > MAX_TENSOR_DIMS:
            raise _errors.ShapeOverflow(f"{ndims} dimensions exceed the maximum of 32")
        code = p[2]
        if dtype_size(code) == 0:
            raise _errors.UnknownDType(code)
        if n < 3 + 4 * ndims:
            raise _errors.IncompleteTensorHeader()
        if n < 5 + 4 * ndims:
            raise _errors.IncompleteTensorHeader()
        name_len = load_le16(p + 3 + 4 * ndims)
        h = 5 + 4 * ndims + name_len
        if n < h:
            raise _errors.IncompleteTensorHeader()
        try:
            name = (<const char*>p)[5 + 4 * ndims:h].decode("utf-8")
        except UnicodeDecodeError:
            raise _errors.InvalidTensorName() from None
        pad = tensor_pad(h)
        if n < h + pad:
            raise _errors.IncompleteTensorHeader()
        for i in range(pad):
            if p[h + i] != 0:
                raise _errors.InvalidPadding()
        shape = tuple([load_le32(p + 3 + 4 * i) for i in range(ndims)])
        checked_nbytes(shape, code, &expected)
        off = h + pad
        if expected != <uint64_t>(n - off):
            raise _errors.TensorDataSizeMismatch(expected, n - off)
        return name, code, shape, off, n - off
    finally:
        PyBuffer_Release(&pb)


# ---------------------------------------------------------------------------
# Receive buffer with export tracking
# ---------------------------------------------------------------------------
cdef class RecvBuffer:
    """A malloc'd byte buffer that knows whether Python views of it are alive.

    Payload views handed to the caller (and numpy arrays over them) keep this
    object alive; while any exists the decoder never writes over old bytes.
    Freed memory is wiped first (best-effort zeroization of plaintext).
    """
    def __cinit__(self, Py_ssize_t cap):
        if cap < 1:
            cap = 1
        self.data = <uint8_t*>malloc(cap)
        if self.data == NULL:
            raise MemoryError()
        self.cap = cap
        self.shape0 = cap
        self.exports = 0

    def __dealloc__(self):
        if self.data != NULL:
            explicit_bzero(self.data, self.cap)
            free(self.data)
            self.data = NULL

    def __getbuffer__(self, Py_buffer* view, int flags):
        view.buf = self.data
        view.obj = self
        view.len = self.cap
        view.readonly = 0
        view.itemsize = 1
        view.format = b"B"
        view.ndim = 1
        view.shape = &self.shape0
        view.strides = NULL
        view.suboffsets = NULL
        view.internal = NULL
        self.exports += 1

    def __releasebuffer__(self, Py_buffer* view):
        self.exports -= 1

    @property
    def capacity(self):
        return self.cap

    @property
    def exported(self):
        return self.exports > 0


cdef class FrameView:
    """One decoded frame: header fields and a view of its payload bytes."""

    def __repr__(self):
        return (f"FrameView(type=0x{self.msg_type:02x}, flags=0x{self.flags:02x}, "
                f"seq={self.sequence}, len={len(self.payload)})")


cdef class FrameDecoder:
    """Incremental frame decoder (transport.md section 1.6) over a growable buffer.

    ``max_payload`` is the configured payload limit (step 2); ``max_buffered``
    bounds the bytes held while a frame is incomplete (ReadBufferOverflow).
    The buffer grows geometrically but never beyond what the peer actually
    sent plus GROWTH_STEP, so a header that claims 32 MiB costs 64 KiB.
    """
    def __init__(self, Py_ssize_t max_payload=MAX_PAYLOAD_SIZE, max_buffered=None,
                 Py_ssize_t initial_capacity=4096):
        if max_payload <= 0 or max_payload > MAX_PAYLOAD_SIZE:
            raise ValueError("max_payload must be in 1..33554432")
        self.max_payload = max_payload
        self.max_buffered = (max_payload + HEADER_SIZE + 4096) if max_buffered is None \
            else max_buffered
        self.buf = RecvBuffer(initial_capacity + BASE)
        self.start = BASE
        self.end = BASE
        self.has_header = False
        self.broken = False

    @property
    def buffered(self):
        """Bytes received but not yet returned as frames (including a consumed header)."""
        return self.end - self.start + (HEADER_SIZE if self.has_header else 0)

    @property
    def capacity(self):
        return self.buf.cap

    @property
    def pending_header(self):
        return bool(self.has_header)

    cdef Py_ssize_t _need(self) noexcept:
        """Bytes still missing for the frame in progress (at least 1)."""
        cdef Py_ssize_t have = self.end - self.start
        if self.has_header:
            return <Py_ssize_t>self.h_len - have if <Py_ssize_t>self.h_len > have else 1
        return HEADER_SIZE - have if HEADER_SIZE > have else 1

    cdef int _make_room(self, Py_ssize_t want) except -1:
        """Ensure ``want`` writable bytes after ``end``, compacting or regrowing."""
        cdef Py_ssize_t have = self.end - self.start
        cdef Py_ssize_t new_cap
        cdef RecvBuffer nb
        if self.buf.cap - self.end >= want:
            return 0
        if self.buf.exports == 0 and self.buf.cap - BASE - have >= want:
            # compact in place, then wipe the consumed (decrypted) bytes behind us
            if self.start != BASE:
                memmove(self.buf.data + BASE, self.buf.data + self.start, have)
                if self.end > BASE + have:
                    explicit_bzero(self.buf.data + BASE + have, self.end - BASE - have)
            self.start = BASE
            self.end = BASE + have
            return 0
        if self.buf.cap - BASE >= have + want:
            new_cap = self.buf.cap      # big enough, but views pin it: same size, fresh memory
        else:
            new_cap = self.buf.cap * 2  # geometric growth, bounded by bytes actually received
            if new_cap < BASE + have + want:
                new_cap = BASE + have + want
        nb = RecvBuffer(new_cap)
        memcpy(nb.data + BASE, self.buf.data + self.start, have)
        if self.buf.exports == 0:
            explicit_bzero(self.buf.data, self.buf.cap)
        self.buf = nb
        self.start = BASE
        self.end = BASE + have
        return 0

    cdef Py_ssize_t _read_size(self) noexcept:
        """How many bytes the next read may bring in (bounded growth)."""
        cdef Py_ssize_t need = self._need()
        cdef Py_ssize_t want = need if need < GROWTH_STEP else GROWTH_STEP
        cdef Py_ssize_t limit
        if want < 4096:
            want = 4096
        # never hold more than max_buffered + 1 bytes: one more byte proves overflow
        limit = self.max_buffered + 1 - (self.end - self.start) - \
            (HEADER_SIZE if self.has_header else 0)
        if want > limit:
            want = limit
        return want if want > 0 else 1

    def feed(self, data):
        """Append bytes (sans-I/O use: tests, fuzzing, handshake residue)."""
        cdef Py_buffer pb
        PyObject_GetBuffer(data, &pb, PyBUF_SIMPLE)
        try:
            if pb.len:
                self._make_room(pb.len)
                memcpy(self.buf.data + self.end, pb.buf, pb.len)
                self.end += pb.len
        finally:
            PyBuffer_Release(&pb)

    def fill(self, int fd, double timeout=-1.0):
        """Read once from ``fd`` into the buffer (GIL released).

        Returns the byte count; 0 means the peer closed the stream.  Raises
        ``errors.Timeout`` when ``timeout`` (seconds, < 0 = none) passes; bytes
        already buffered are kept, so a timeout never cuts a frame in half.
        """
        return self.fill_c(fd, timeout)

    cdef Py_ssize_t fill_c(self, int fd, double timeout) except -1:
        cdef Py_ssize_t want = self._read_size()
        cdef ssize_t r
        cdef int err = 0
        cdef int64_t deadline = -1
        cdef char* dst
        deadline = deadline_after(timeout)
        self._make_room(want)
        dst = <char*>self.buf.data + self.end
        r = io_try_recv(fd, dst, want, &err)      # bytes already there: keep the GIL
        while True:
            if r == IO_AGAIN:
                with nogil:
                    r = io_wait_recv(fd, dst, want, deadline, &err)
                if r == IO_AGAIN:
                    PyErr_CheckSignals()
                    continue
            if r > 0:
                self.end += r
                return r
            if r == IO_EOF:
                return 0
            if r == IO_TIMEOUT:
                raise _errors.Timeout("timed out waiting for data")
            if err == ECONNRESET or err == EPIPE or err == ENOTCONN:
                raise _errors.Closed(f"connection reset by peer ({strerror(err).decode()})")
            raise OSError(err, strerror(err).decode())

    def next_frame(self):
        """The next complete frame, or None when more bytes are needed."""
        return self.next_frame_c()

    cdef FrameView next_frame_c(self):
        cdef const uint8_t* p
        cdef int code
        cdef FrameView fv
        cdef Py_ssize_t have
        if self.broken:
            raise _errors.ChannelBroken("frame stream is desynchronised by an earlier error")
        if not self.has_header:
            if self.end - self.start < HEADER_SIZE:
                self._check_overflow()
                return None
            p = self.buf.data + self.start
            code = header_check(p)
            if code != HDR_OK:
                self.broken = True
                raise_header_error(code, p)
            self.h_type = p[3]
            self.h_flags = p[4]
            self.h_seq = load_be32(p + 5)
            self.h_len = load_be32(p + 9)
            self.start += HEADER_SIZE
            self.has_header = True
            if self.h_len > self.max_payload:
                self.broken = True
                raise _errors.PayloadTooLarge(self.h_len, self.max_payload)
        have = self.end - self.start
        if have < <Py_ssize_t>self.h_len:
            self._check_overflow()
            return None
        fv = FrameView.__new__(FrameView)
        fv.msg_type = self.h_type
        fv.flags = self.h_flags
        fv.sequence = self.h_seq
        fv.payload = memoryview(self.buf)[self.start:self.start + self.h_len]
        self.start += self.h_len
        self.has_header = False
        return fv

    cdef int _check_overflow(self) except -1:
        cdef Py_ssize_t size = self.end - self.start + (HEADER_SIZE if self.has_header else 0)
        if size > self.max_buffered:
            self.broken = True
            raise _errors.ReadBufferOverflow(size)
        return 0

    def wipe(self):
        """Forget every buffered byte and zero the memory (channel teardown)."""
        if self.buf.exports == 0:
            explicit_bzero(self.buf.data, self.buf.cap)
        self.buf = RecvBuffer(4096 + BASE)
        self.start = self.end = BASE
        self.has_header = False
