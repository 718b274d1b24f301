# cython: language_level=3
"""Socket I/O with the GIL released: whole-frame writes, AF_VSOCK, the relay pump.

The channel owns Python socket objects for their lifetime; this module only
works on their file descriptors.  Waits are deadline-bounded and sliced so
Ctrl-C is honoured (see sysio.pxd).
"""

from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from cpython.exc cimport PyErr_CheckSignals
from libc.errno cimport errno, EINTR, EAGAIN, EINVAL, ENOSYS, EPIPE, ECONNRESET, ENOTCONN
from libc.stdint cimport int64_t, uint32_t
from libc.stdlib cimport malloc, free
from libc.string cimport memset

from sysio cimport *

from cmlp import errors as _errors

cdef extern from "string.h" nogil:
    char* strerror(int errnum)

cdef extern from "unistd.h" nogil:
    int close(int fd)
    ssize_t c_write "write"(int fd, const void* buf, size_t n)

cdef extern from "fcntl.h" nogil:
    ssize_t splice(int fd_in, void* off_in, int fd_out, void* off_out, size_t len,
                   unsigned int flags)
    int pipe2(int* fds, int flags)
    int fcntl(int fd, int cmd, ...)
    enum:
        SPLICE_F_MOVE
        O_CLOEXEC
        F_SETPIPE_SZ

cdef extern from "sys/socket.h" nogil:
    ctypedef unsigned int socklen_t
    struct sockaddr:
        pass
    int socket(int domain, int type, int protocol)
    int bind(int fd, const sockaddr* addr, socklen_t len)
    int listen(int fd, int backlog)
    int setsockopt(int fd, int level, int optname, const void* optval, socklen_t optlen)
    int shutdown(int fd, int how)
    enum:
        SOCK_STREAM
        SOCK_CLOEXEC
        SOL_SOCKET
        SO_REUSEADDR
        SHUT_WR
        SHUT_RDWR

cdef extern from "linux/vm_sockets.h" nogil:
    """
    #ifndef AF_VSOCK
    #define AF_VSOCK 40
    #endif
    """
    struct sockaddr_vm:
        unsigned short svm_family
        unsigned short svm_reserved1
        unsigned int svm_port
        unsigned int svm_cid
    enum:
        AF_VSOCK
        VMADDR_CID_ANY
        VMADDR_CID_HOST


# the header's -1U: cast, or Python sees the enum's int value -1
VSOCK_CID_ANY = <uint32_t>VMADDR_CID_ANY
VSOCK_CID_HOST = <uint32_t>VMADDR_CID_HOST


cdef raise_errno(int err, str what):
    if err == EPIPE or err == ECONNRESET or err == ENOTCONN:
        raise _errors.Closed(f"{what}: connection closed by peer ({strerror(err).decode()})")
    raise OSError(err, f"{what}: {strerror(err).decode()}")


class PartialWrite(_errors.Timeout):
    """A send timed out after part of the bytes went out: the stream is now torn."""

    def __init__(self, sent, total):
        self.sent = sent
        self.total = total
        super().__init__(f"send timed out after {sent} of {total} bytes")


def send_all(int fd, buf, Py_ssize_t n=-1, double timeout=-1.0):
    """Write ``buf[:n]`` completely (GIL released).  One frame, one call.

    On timeout raises ``errors.Timeout`` when nothing was written, or
    ``PartialWrite`` when the frame was cut (the caller must drop the channel).
    """
    cdef Py_buffer pb
    PyObject_GetBuffer(buf, &pb, PyBUF_SIMPLE)
    try:
        if n < 0 or n > pb.len:
            n = pb.len
        return send_all_c(fd, <const char*>pb.buf, n, timeout)
    finally:
        PyBuffer_Release(&pb)


cdef Py_ssize_t send_all_c(int fd, const char* buf, Py_ssize_t n, double timeout) except -1:
    cdef Py_ssize_t sent = 0
    cdef ssize_t r
    cdef int err = 0
    cdef int64_t deadline = -1
    deadline = deadline_after(timeout)
    r = io_try_send(fd, buf, n, &err)         # the common case: it all fits at once
    if r >= 0:
        sent = r
    while sent < n:
        if r != IO_ERRNO:
            with nogil:
                r = io_wait_send(fd, buf + sent, n - sent, deadline, &err)
        if r >= 0:
            sent += r
        elif r == IO_AGAIN:
            PyErr_CheckSignals()
        elif r == IO_TIMEOUT:
            if sent:
                raise PartialWrite(sent, n)
            raise _errors.Timeout("send timed out")
        else:
            raise_errno(err, "send")
    return sent


# ---------------------------------------------------------------------------
# AF_VSOCK
# ---------------------------------------------------------------------------
cdef int vsock_fd() except -1:
    cdef int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0)
    if fd < 0:
        raise_errno(errno, "socket(AF_VSOCK)")
    return fd


cdef void fill_vm(sockaddr_vm* a, uint32_t cid, uint32_t port) noexcept nogil:
    memset(a, 0, sizeof(sockaddr_vm))
    a.svm_family = AF_VSOCK
    a.svm_cid = cid
    a.svm_port = port


def vsock_listen(uint32_t port, uint32_t cid=VMADDR_CID_ANY, int backlog=16):
    """Bind and listen on (cid, port); returns the file descriptor."""
    cdef sockaddr_vm addr
    cdef int fd = vsock_fd()
    cdef int one = 1
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one))
    fill_vm(&addr, cid, port)
    if bind(fd, <sockaddr*>&addr, sizeof(addr)) != 0 or listen(fd, backlog) != 0:
        err = errno
        close(fd)
        raise_errno(err, f"vsock listen on cid={cid},port={port}")
    return fd


# ---------------------------------------------------------------------------
# Relay pump (host side; never decrypts)
# ---------------------------------------------------------------------------
cdef enum:
    PUMP_CHUNK = 1 << 20


cdef long long pump_splice(int src, int dst, int* err) noexcept nogil:
    """Move bytes src -> dst through a pipe with splice(2); -2 when unsupported."""
    cdef int p[2]
    cdef ssize_t n, m
    cdef long long total = 0
    if pipe2(p, O_CLOEXEC) != 0:
        err[0] = errno
        return -2
    fcntl(p[1], F_SETPIPE_SZ, PUMP_CHUNK)
    while True:
        n = splice(src, NULL, p[1], NULL, PUMP_CHUNK, SPLICE_F_MOVE)
        if n == 0:
            break
        if n < 0:
            if errno == EINTR or errno == EAGAIN:
                continue
            if total == 0 and (errno == EINVAL or errno == ENOSYS):
                close(p[0])
                close(p[1])
                return -2
            err[0] = errno
            break
        while n > 0:
            # no SPLICE_F_MORE here: it corks TCP and delays small frames by up to 200 ms
            m = splice(p[0], NULL, dst, NULL, n, SPLICE_F_MOVE)
            if m < 0:
                if errno == EINTR or errno == EAGAIN:
                    continue
                err[0] = errno
                close(p[0])
                close(p[1])
                return total
            if m == 0:
                # nothing moved while bytes are waiting: the destination cannot take
                # more (it would otherwise spin here forever)
                err[0] = EPIPE
                close(p[0])
                close(p[1])
                return total
            n -= m
            total += m
    close(p[0])
    close(p[1])
    return total


cdef long long pump_copy(int src, int dst, int capture, char* buf, int* err) noexcept nogil:
    """recv/send loop; also appends every forwarded byte to ``capture`` when >= 0."""
    cdef ssize_t n, m, off, w
    cdef long long total = 0
    while True:
        n = c_recv(src, buf, PUMP_CHUNK, 0)
        if n == 0:
            break
        if n < 0:
            if errno == EINTR or errno == EAGAIN:
                continue
            err[0] = errno
            break
        if capture >= 0:
            off = 0
            while off < n:
                w = c_write(capture, buf + off, n - off)
                if w <= 0:
                    if w < 0 and errno == EINTR:
                        continue
                    err[0] = errno
                    return total
                off += w
        off = 0
        while off < n:
            m = c_send(dst, buf + off, n - off, MSG_NOSIGNAL)
            if m < 0:
                if errno == EINTR or errno == EAGAIN:
                    continue
                err[0] = errno
                return total
            if m == 0:
                err[0] = EPIPE
                return total
            off += m
        total += n
    return total


def pump(int src, int dst, int capture_fd=-1):
    """Forward bytes from ``src`` to ``dst`` until EOF or error (GIL released).

    Uses splice(2) (zero-copy) unless a capture file descriptor is given or the
    socket family does not support it.  On EOF the write side of ``dst`` is
    shut down so the half-close reaches the far end.  Returns
    ``(bytes_forwarded, errno_or_0)``; it never raises on socket errors, since
    the relay controller decides what a failed link means.
    """
    cdef int err = 0
    cdef long long total = -2
    cdef char* buf = NULL
    if capture_fd < 0:
        with nogil:
            total = pump_splice(src, dst, &err)
    if total == -2:
        err = 0
        buf = <char*>malloc(PUMP_CHUNK)
        if buf == NULL:
            raise MemoryError()
        try:
            with nogil:
                total = pump_copy(src, dst, capture_fd, buf, &err)
        finally:
            free(buf)
    with nogil:
        shutdown(dst, SHUT_WR)
    return total, err


def shutdown_both(int fd):
    """Wake any thread blocked on ``fd`` (relay teardown)."""
    with nogil:
        shutdown(fd, SHUT_RDWR)
