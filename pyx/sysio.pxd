# cython: language_level=3
"""Deadline-bounded socket syscalls, callable without the GIL.

Every wait is sliced (``SLICE_MS``) so the caller can re-take the GIL between
slices and let Python run signal handlers: Ctrl-C interrupts a blocked read.
EWOULDBLOCK equals EAGAIN on Linux, the only target.
All sends use MSG_NOSIGNAL (a closed peer gives EPIPE, never SIGPIPE).
"""

from libc.errno cimport errno, EINTR, EAGAIN
from libc.stdint cimport int64_t

cdef extern from "poll.h" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd* fds, unsigned long nfds, int timeout)
    enum:
        POLLIN
        POLLOUT
        POLLERR
        POLLHUP
        POLLNVAL

cdef extern from "sys/types.h" nogil:
    ctypedef long ssize_t

cdef extern from "sys/socket.h" nogil:
    ssize_t c_recv "recv"(int fd, void* buf, size_t n, int flags)
    ssize_t c_send "send"(int fd, const void* buf, size_t n, int flags)
    enum:
        MSG_NOSIGNAL
        MSG_DONTWAIT

cdef extern from "time.h" nogil:
    ctypedef long time_t
    struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(int clk, timespec* ts)
    enum:
        CLOCK_MONOTONIC

cdef enum:
    IO_AGAIN = -1      # a wait slice ended: re-check signals and deadline, then call again
    IO_TIMEOUT = -2    # the deadline passed
    IO_EOF = -3        # orderly shutdown by the peer
    IO_ERRNO = -4      # a socket error; errno is in *err
    SLICE_MS = 200


cdef inline int64_t now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef inline int wait_ms(int64_t deadline_ns) noexcept nogil:
    """Milliseconds to wait in one slice; -2 (IO_TIMEOUT) when the deadline passed."""
    cdef int64_t left
    if deadline_ns < 0:
        return SLICE_MS
    left = deadline_ns - now_ns()
    if left <= 0:
        return IO_TIMEOUT
    left = (left + 999999) // 1000000
    return <int>(left if left < SLICE_MS else SLICE_MS)


cdef inline ssize_t io_recv_some(int fd, char* buf, size_t n, int64_t deadline_ns,
                                 int* err) noexcept nogil:
    """Read 1..n bytes. Returns the count, IO_AGAIN, IO_TIMEOUT, IO_EOF or IO_ERRNO."""
    cdef ssize_t r
    cdef pollfd pfd
    cdef int ms
    r = c_recv(fd, buf, n, MSG_DONTWAIT)
    if r > 0:
        return r
    if r == 0:
        return IO_EOF
    if errno == EINTR:
        return IO_AGAIN
    if errno != EAGAIN:
        err[0] = errno
        return IO_ERRNO
    ms = wait_ms(deadline_ns)
    if ms == IO_TIMEOUT:
        return IO_TIMEOUT
    pfd.fd = fd
    pfd.events = POLLIN
    pfd.revents = 0
    poll(&pfd, 1, ms)
    return IO_AGAIN


cdef inline ssize_t io_send_some(int fd, const char* buf, size_t n, int64_t deadline_ns,
                                 int* err) noexcept nogil:
    """Write 1..n bytes. Returns the count, IO_AGAIN, IO_TIMEOUT or IO_ERRNO."""
    cdef ssize_t r
    cdef pollfd pfd
    cdef int ms
    r = c_send(fd, buf, n, MSG_NOSIGNAL | MSG_DONTWAIT)
    if r >= 0:
        return r
    if errno == EINTR:
        return IO_AGAIN
    if errno != EAGAIN:
        err[0] = errno
        return IO_ERRNO
    ms = wait_ms(deadline_ns)
    if ms == IO_TIMEOUT:
        return IO_TIMEOUT
    pfd.fd = fd
    pfd.events = POLLOUT
    pfd.revents = 0
    poll(&pfd, 1, ms)
    return IO_AGAIN
