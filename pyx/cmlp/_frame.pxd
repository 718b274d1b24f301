# cython: language_level=3
"""C-level interface of cmlp._frame, cimported by cmlp._record."""

from libc.stdint cimport uint8_t, uint32_t


cdef class RecvBuffer:
    cdef uint8_t* data
    cdef Py_ssize_t cap
    cdef Py_ssize_t shape0
    cdef int exports


cdef class FrameView:
    cdef readonly int msg_type
    cdef readonly int flags
    cdef readonly uint32_t sequence
    cdef readonly object payload     # memoryview into the decoder's RecvBuffer


cdef class FrameDecoder:
    cdef RecvBuffer buf
    cdef Py_ssize_t start, end
    cdef bint has_header
    cdef uint8_t h_type, h_flags
    cdef uint32_t h_seq, h_len
    cdef public Py_ssize_t max_payload
    cdef public Py_ssize_t max_buffered
    cdef bint broken

    cdef Py_ssize_t _need(self) noexcept
    cdef int _make_room(self, Py_ssize_t want) except -1
    cdef Py_ssize_t _read_size(self) noexcept
    cdef int _check_overflow(self) except -1
    cdef FrameView next_frame_c(self)
    cdef Py_ssize_t fill_c(self, int fd, double timeout) except -1


cdef Py_ssize_t tensor_payload_size_c(Py_ssize_t name_len, Py_ssize_t ndims,
                                      Py_ssize_t data_len) noexcept
cdef Py_ssize_t encode_tensor_c(uint8_t* out, Py_ssize_t room, bytes name_b, int dtype_code,
                                tuple shape, const uint8_t* data, Py_ssize_t data_len) except -1
