# cython: language_level=3
"""Record layer: ChaCha20-Poly1305-IETF sealing and opening in the frame buffer.

transport.md section 4.  The nonce is ``00000000 || seq (u64 BE)``; the 43-byte
AAD is ``0x04 || msg_type || flags || session_id || seq (u64 BE)``; the tag is
appended after the ciphertext.  Sealing writes header, ciphertext and tag into
one caller-owned buffer so the frame goes out in one write; opening decrypts
in place inside the decoder's receive buffer.  No Python bytes are created per
frame on either path, and libsodium runs with the GIL released.
"""

from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE, PyBUF_WRITABLE
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t
from libc.string cimport memcpy

from libc.stdlib cimport malloc, free

from wire cimport *
from sodium cimport *
from sysio cimport now_ns, deadline_after
from cmlp._frame cimport FrameDecoder, FrameView, encode_tensor_c, tensor_payload_size_c
from cmlp._netio cimport send_all_c

from cmlp import errors as _errors
from cmlp._netio import PartialWrite as _PartialWrite

if sodium_init() < 0:
    raise ImportError("libsodium failed to initialise")

LIBSODIUM_VERSION = sodium_version_string().decode()
MAX_SEQUENCE = 0xFFFFFFFF

cdef enum:
    # smaller records are sealed/opened without dropping the GIL:
    # ~1 us of crypto is cheaper than a possible thread switch
    NOGIL_MIN = 16384


cdef inline void make_nonce(uint8_t* nonce, uint64_t seq) noexcept nogil:
    nonce[0] = nonce[1] = nonce[2] = nonce[3] = 0
    store_be64(nonce + 4, seq)


cdef inline void make_aad(uint8_t* aad, uint8_t msg_type, uint8_t flags,
                          const uint8_t* sid, uint64_t seq) noexcept nogil:
    aad[0] = PROTOCOL_VERSION
    aad[1] = msg_type
    aad[2] = flags
    memcpy(aad + 3, sid, SID_SIZE)
    store_be64(aad + 35, seq)


cdef inline int seal_detached(uint8_t* frame, const uint8_t* pt, Py_ssize_t pt_len,
                              const uint8_t* aad, const uint8_t* nonce,
                              const uint8_t* key) noexcept nogil:
    """Ciphertext at frame + 13, tag right after it."""
    return crypto_aead_chacha20poly1305_ietf_encrypt_detached(
        frame + HEADER_SIZE, frame + HEADER_SIZE + pt_len, NULL,
        pt, <unsigned long long>pt_len, aad, AAD_SIZE, NULL, nonce, key)


cdef inline int open_detached(uint8_t* ct, Py_ssize_t n, const uint8_t* aad,
                              const uint8_t* nonce, const uint8_t* key) noexcept nogil:
    """Verify the tag at ct + n, then decrypt ct[0:n] in place."""
    return crypto_aead_chacha20poly1305_ietf_decrypt_detached(
        ct, NULL, ct, <unsigned long long>n, ct + n, aad, AAD_SIZE, nonce, key)


cdef int copy_key(uint8_t* dst, object src, str what) except -1:
    cdef Py_buffer pb
    PyObject_GetBuffer(src, &pb, PyBUF_SIMPLE)
    try:
        if pb.len != 32:
            raise ValueError(f"{what} must be 32 bytes, got {pb.len}")
        memcpy(dst, pb.buf, 32)
    finally:
        PyBuffer_Release(&pb)
    return 0


cdef class _DirectionKeys:
    """One direction's key and the session id; the key is wiped on wipe() and on free."""
    cdef uint8_t key[KEY_SIZE]
    cdef uint8_t sid[SID_SIZE]
    cdef readonly bint wiped

    def __cinit__(self, key, session_id, *args, **kwargs):
        copy_key(self.key, key, "key")
        copy_key(self.sid, session_id, "session_id")

    def __dealloc__(self):
        sodium_memzero(self.key, KEY_SIZE)

    def wipe(self):
        """Zero the key; every later seal or open raises ChannelBroken."""
        sodium_memzero(self.key, KEY_SIZE)
        self.wiped = True

    cdef int _usable(self) except -1:
        if self.wiped:
            raise _errors.ChannelBroken("channel keys were wiped")
        return 0


cdef class Sealer(_DirectionKeys):
    """Send direction: key, session id and the next sequence number."""
    cdef uint64_t next_seq
    cdef public Py_ssize_t max_payload

    def __init__(self, key, session_id, uint64_t next_sequence=0,
                 Py_ssize_t max_payload=MAX_PAYLOAD_SIZE):
        self.next_seq = next_sequence
        self.max_payload = max_payload

    @property
    def next_sequence(self):
        return self.next_seq

    cdef int _check(self, Py_ssize_t pt_len) except -1:
        # section 4.5 step 1, then the sender-side size check the reference lacks
        self._usable()
        if self.next_seq > MAX_SEQUENCE:
            raise _errors.NonceOverflow()
        if pt_len + TAG_SIZE > self.max_payload:
            raise _errors.PayloadTooLarge(pt_len + TAG_SIZE, self.max_payload)
        return 0

    cdef Py_ssize_t _seal(self, uint8_t* frame, const uint8_t* pt, Py_ssize_t pt_len,
                          int msg_type, int flags) except -1:
        """frame[13:13+len] = Enc(pt); frame[13+len:+16] = tag; frame[0:13] = header."""
        cdef uint8_t nonce[NONCE_SIZE]
        cdef uint8_t aad[AAD_SIZE]
        cdef uint64_t seq = self.next_seq
        cdef int rc
        self._check(pt_len)
        if not (0 <= msg_type <= 255) or not known_msg_type(<uint8_t>msg_type) \
                or msg_type == MSG_HELLO:
            raise ValueError(f"message type {msg_type} cannot be sealed")
        make_nonce(nonce, seq)
        make_aad(aad, <uint8_t>msg_type, <uint8_t>flags, self.sid, seq)
        if pt_len >= NOGIL_MIN:
            with nogil:
                rc = seal_detached(frame, pt, pt_len, aad, nonce, self.key)
        else:
            rc = seal_detached(frame, pt, pt_len, aad, nonce, self.key)
        if rc != 0:
            raise _errors.SealFailed()
        header_store(frame, <uint8_t>msg_type, <uint8_t>flags, <uint32_t>seq,
                     <uint32_t>(pt_len + TAG_SIZE))
        self.next_seq = seq + 1
        return HEADER_SIZE + pt_len + TAG_SIZE

    def seal_into(self, buf, int msg_type, int flags, plaintext):
        """Encrypt ``plaintext`` straight into ``buf`` as a complete frame."""
        cdef Py_buffer out, src
        PyObject_GetBuffer(buf, &out, PyBUF_WRITABLE)
        try:
            PyObject_GetBuffer(plaintext, &src, PyBUF_SIMPLE)
            try:
                if HEADER_SIZE + src.len + TAG_SIZE > out.len:
                    raise ValueError("buffer too small for header + plaintext + tag")
                return self._seal(<uint8_t*>out.buf, <const uint8_t*>src.buf, src.len,
                                  msg_type, flags)
            finally:
                PyBuffer_Release(&src)
        finally:
            PyBuffer_Release(&out)

    def seal_frame(self, int msg_type, int flags, plaintext=b""):
        """A sealed frame as bytes (tests and tools; the channel uses seal_into)."""
        n = len(memoryview(plaintext).cast("B"))
        out = bytearray(HEADER_SIZE + n + TAG_SIZE)
        self.seal_into(out, msg_type, flags, plaintext)
        return bytes(out)


cdef class Opener(_DirectionKeys):
    """Receive direction: key, session id and the next expected sequence number.

    Stricter than section 1.4 (which accepts any first sequence and allows
    gaps): exactly ``seq == expected`` is accepted, starting at 0.  A dropped,
    reordered or duplicated frame is a typed error, never a silent gap.  The
    reference sender starts at 0 and never skips, so this stays interoperable.
    """
    cdef uint64_t expected

    def __init__(self, key, session_id):
        self.expected = 0

    @property
    def last_accepted(self):
        return self.expected - 1 if self.expected else None

    @property
    def expected_sequence(self):
        return self.expected

    cdef Py_ssize_t _open(self, uint64_t seq, int msg_type, int flags,
                          uint8_t* ct, Py_ssize_t ct_len) except -1:
        cdef uint8_t nonce[NONCE_SIZE]
        cdef uint8_t aad[AAD_SIZE]
        cdef int rc
        cdef Py_ssize_t n
        self._usable()
        # sequence check before decryption: exactly the next one
        if seq < self.expected:
            raise _errors.SequenceReplay(seq, self.expected)
        if seq > self.expected:
            raise _errors.SequenceGap(seq, self.expected)
        if ct_len < TAG_SIZE:
            raise _errors.OpenFailed("AEAD open failed: ciphertext shorter than the tag")
        n = ct_len - TAG_SIZE
        make_nonce(nonce, seq)
        make_aad(aad, <uint8_t>msg_type, <uint8_t>flags, self.sid, seq)
        if n >= NOGIL_MIN:
            with nogil:
                rc = open_detached(ct, n, aad, nonce, self.key)
        else:
            rc = open_detached(ct, n, aad, nonce, self.key)
        if rc != 0:
            raise _errors.OpenFailed()
        self.expected = seq + 1
        return n

    def open_in_place(self, uint64_t sequence, int msg_type, int flags, payload):
        """Authenticate and decrypt ``payload`` in place; returns the plaintext view."""
        cdef Py_buffer pb
        cdef Py_ssize_t n
        PyObject_GetBuffer(payload, &pb, PyBUF_WRITABLE)
        try:
            n = self._open(sequence, msg_type & 0xFF, flags & 0xFF, <uint8_t*>pb.buf, pb.len)
        finally:
            PyBuffer_Release(&pb)
        return memoryview(payload)[:n]

    def open_frame(self, FrameView frame):
        """Steps 2-6 of section 4.6 on a decoded frame; returns the plaintext view."""
        return self.open_frame_c(frame)

    cdef object open_frame_c(self, FrameView frame):
        if frame.msg_type == MSG_HELLO:
            raise _errors.UnexpectedMessage("Data/Tensor/Heartbeat/Shutdown/Error", "Hello")
        if not (frame.flags & FLAG_ENCRYPTED):
            raise _errors.UnencryptedFrame()
        return self.open_in_place(frame.sequence, frame.msg_type, frame.flags, frame.payload)


cdef class RecordLayer:
    """One connection's established record layer: sealed frames out, opened frames in.

    Owns the send buffer (header + ciphertext + tag laid out contiguously, so
    a frame is one write) and drives the frame decoder's socket reads.  Every
    per-frame step runs here at C level; ``SecureChannel`` only adds locking
    and the message types.
    """
    cdef int fd
    cdef readonly FrameDecoder decoder
    cdef readonly Sealer sealer
    cdef readonly Opener opener
    cdef uint8_t* sbuf
    cdef Py_ssize_t scap
    cdef Py_ssize_t pending          # sealed bytes not yet written (``more=True``)
    cdef uint64_t chain_seq          # the sealer's sequence before the pending frames
    cdef readonly long long bytes_sent
    cdef readonly long long bytes_received

    def __init__(self, int fd, FrameDecoder decoder, send_key, recv_key, session_id,
                 Py_ssize_t max_payload=MAX_PAYLOAD_SIZE):
        self.fd = fd
        self.decoder = decoder
        self.sealer = Sealer(send_key, session_id, 0, max_payload)
        self.opener = Opener(recv_key, session_id)
        self._reserve(64 * 1024)

    def __dealloc__(self):
        if self.sbuf != NULL:
            sodium_memzero(self.sbuf, self.scap)
            free(self.sbuf)

    cdef int _reserve(self, Py_ssize_t extra) except -1:
        """Room for ``extra`` more bytes after the pending ones."""
        cdef uint8_t* nb
        cdef Py_ssize_t n = self.pending + extra
        if n <= self.scap:
            return 0
        if n < 2 * self.scap:
            n = 2 * self.scap
        nb = <uint8_t*>malloc(n)
        if nb == NULL:
            raise MemoryError()
        if self.sbuf != NULL:
            memcpy(nb, self.sbuf, self.pending)
            sodium_memzero(self.sbuf, self.scap)
            free(self.sbuf)
        self.sbuf = nb
        self.scap = n
        return 0

    cdef int _begin(self) except -1:
        """Before sealing: remember where a new chain of frames starts."""
        if self.pending == 0:
            self.chain_seq = self.sealer.next_seq
        return 0

    cdef int _sealed(self, Py_ssize_t n, bint more, double timeout) except -1:
        """Account a sealed frame; write everything pending unless more frames follow.

        Until the write succeeds the frames stay pending, so a failed write
        (or a later failed seal in the chain) goes through discard_pending(),
        which rolls the sequence back: the peer never sees a gap.
        """
        self.pending += n
        if more:
            return 0
        try:
            send_all_c(self.fd, <const char*>self.sbuf, self.pending, timeout)
        except _errors.Timeout as exc:
            if isinstance(exc, _PartialWrite):
                self.sealer.wipe()
            raise                   # nothing written: discard_pending() may roll back
        except BaseException:
            self.sealer.wipe()      # part may have gone out: never reuse these nonces
            raise
        self.bytes_sent += self.pending
        self.pending = 0
        return 0

    def send(self, int msg_type, payload, double timeout=-1.0, bint more=False):
        """Seal ``payload`` as one frame of ``msg_type`` (flags 0x01) and write it.

        ``more=True`` keeps the sealed frame in the buffer so the next send
        writes both at once (a tensor and its END marker: one syscall).
        """
        cdef Py_buffer pb
        cdef Py_ssize_t n
        PyObject_GetBuffer(payload, &pb, PyBUF_SIMPLE)
        try:
            self.sealer._check(pb.len)
            self._begin()
            self._reserve(HEADER_SIZE + pb.len + TAG_SIZE)
            n = self.sealer._seal(self.sbuf + self.pending, <const uint8_t*>pb.buf, pb.len,
                                  msg_type, FLAG_ENCRYPTED)
        finally:
            PyBuffer_Release(&pb)
        self._sealed(n, more, timeout)

    def send_tensor(self, bytes name, int dtype_code, tuple shape, data, double timeout=-1.0,
                    bint more=False):
        """Encode the tensor payload into the send buffer, seal it in place, write it."""
        cdef Py_buffer pb
        cdef Py_ssize_t pt_len, n
        cdef uint8_t* frame
        PyObject_GetBuffer(data, &pb, PyBUF_SIMPLE)
        try:
            pt_len = tensor_payload_size_c(len(name), len(shape), pb.len)
            self.sealer._check(pt_len)
            self._begin()
            self._reserve(HEADER_SIZE + pt_len + TAG_SIZE)
            frame = self.sbuf + self.pending
            encode_tensor_c(frame + HEADER_SIZE, pt_len, name, dtype_code, shape,
                            <const uint8_t*>pb.buf, pb.len)
        finally:
            PyBuffer_Release(&pb)
        n = self.sealer._seal(frame, frame + HEADER_SIZE, pt_len, MSG_TENSOR,
                              FLAG_ENCRYPTED | FLAG_TENSOR_PAYLOAD)
        self._sealed(n, more, timeout)

    def recv(self, double timeout=-1.0):
        """The next authenticated frame as ``(msg_type, plaintext view)``.

        Raises ``errors.Closed`` on EOF and ``errors.Timeout`` when ``timeout``
        seconds pass (buffered bytes are kept for the next call).
        """
        cdef FrameView fv
        cdef int64_t deadline = -1
        cdef double left = -1.0
        cdef Py_ssize_t n
        deadline = deadline_after(timeout)
        while True:
            fv = self.decoder.next_frame_c()
            if fv is not None:
                return fv.msg_type, self.opener.open_frame_c(fv)
            if deadline >= 0:
                left = (deadline - now_ns()) / 1e9
                if left < 0:
                    left = 0.0
            n = self.decoder.fill_c(self.fd, left)
            if n == 0:
                raise _errors.Closed()
            self.bytes_received += n

    def discard_pending(self):
        """Drop frames not yet written after a failed send chain; returns how many.

        The sealer's sequence goes back to the first dropped frame, so the next
        frame carries the number the peer expects.  Reusing those nonces is safe
        only because none of the dropped ciphertext left the process: a write
        cut part-way (PartialWrite) must close the channel instead, which the
        channel does.
        """
        cdef uint64_t dropped = 0
        if self.pending:
            dropped = self.sealer.next_seq - self.chain_seq
            self.sealer.next_seq = self.chain_seq
            sodium_memzero(self.sbuf, self.pending)
            self.pending = 0
        return dropped

    def wipe(self):
        self.sealer.wipe()
        self.opener.wipe()


def aead_seal(key, uint64_t seq, int msg_type, int flags, session_id, plaintext):
    """Ciphertext || tag for one record (reference computation for tests)."""
    cdef Sealer s = Sealer(key, session_id, seq, MAX_PAYLOAD_SIZE)
    frame = s.seal_frame(msg_type, flags, plaintext)
    return frame[HEADER_SIZE:]
