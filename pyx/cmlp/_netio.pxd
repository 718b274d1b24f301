# cython: language_level=3
"""C-level interface of cmlp._netio, cimported by cmlp._record."""

cdef Py_ssize_t send_all_c(int fd, const char* buf, Py_ssize_t n, double timeout) except -1
