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


cdef enum:
    MAX_TIMEOUT_S = 100000000    # ~3 years: longer timeouts mean "no deadline"


cdef inline int64_t deadline_after(double timeout) noexcept nogil:
    """Absolute deadline (ns) ``timeout`` seconds from now; -1 = none.

    Negative timeouts and NaN mean no deadline, and so does anything above
    MAX_TIMEOUT_S: ``timeout * 1e9`` is never cast to int64 out of range.
    """
    if not (timeout >= 0) or timeout > MAX_TIMEOUT_S:
        return -1
    return now_ns() + <int64_t>(timeout * 1e9)


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


cdef inline ssize_t io_try_recv(int fd, char* buf, size_t n, int* err) noexcept nogil:
    """One non-blocking recv: the count, IO_EOF, IO_AGAIN (nothing yet) or IO_ERRNO.

    Callers try this while holding the GIL first: data that is already there
    costs no GIL release, so no thread switch.
    """
    cdef ssize_t r = c_recv(fd, buf, n, MSG_DONTWAIT)
    if r > 0:
        return r
    if r == 0:
        return IO_EOF
    if errno == EINTR or errno == EAGAIN:
        return IO_AGAIN
    err[0] = errno
    return IO_ERRNO


cdef inline int io_wait(int fd, short events, int64_t deadline_ns) noexcept nogil:
    """Poll ``fd`` for one slice at most: 0, or IO_TIMEOUT once the deadline passed."""
    cdef pollfd pfd
    cdef int ms = wait_ms(deadline_ns)
    if ms == IO_TIMEOUT:
        return IO_TIMEOUT
    pfd.fd = fd
    pfd.events = events
    pfd.revents = 0
    poll(&pfd, 1, ms)
    return 0


cdef inline ssize_t io_wait_recv(int fd, char* buf, size_t n, int64_t deadline_ns,
                                 int* err) noexcept nogil:
    """Wait (one slice at most) until readable, then recv once."""
    if io_wait(fd, POLLIN, deadline_ns) == IO_TIMEOUT:
        return IO_TIMEOUT
    return io_try_recv(fd, buf, n, err)


cdef inline ssize_t io_try_send(int fd, const char* buf, size_t n, int* err) noexcept nogil:
    """One non-blocking send: the count (may be partial), IO_AGAIN or IO_ERRNO."""
    cdef ssize_t r = c_send(fd, buf, n, MSG_NOSIGNAL | MSG_DONTWAIT)
    if r >= 0:
        return r
    if errno == EINTR or errno == EAGAIN:
        return IO_AGAIN
    err[0] = errno
    return IO_ERRNO


cdef inline ssize_t io_wait_send(int fd, const char* buf, size_t n, int64_t deadline_ns,
                                 int* err) noexcept nogil:
    """Wait (one slice at most) until writable, then send once."""
    if io_wait(fd, POLLOUT, deadline_ns) == IO_TIMEOUT:
        return IO_TIMEOUT
    return io_try_send(fd, buf, n, err)
