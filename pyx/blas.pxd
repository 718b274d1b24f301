# cython: language_level=3
"""CBLAS (OpenBLAS) declarations and the row-major wrappers cmlp uses.

Every matrix in cmlp is row-major (numpy C order).  The storage order is
handled here and nowhere else: callers pass row-major shapes and leading
dimensions, the wrappers pass ``CblasRowMajor`` and let CBLAS map it onto
the column-major Fortran kernels.

Threading: OpenBLAS is kept single-threaded (``openblas_set_num_threads(1)``
at import of ``cmlp._gpt2``) and is called from cmlp's own worker pool, one
tile per call; see csrc/gpt2_kernels.c for why.
"""

cdef extern from "cmlp_cblas.h" nogil:   # cblas.h, names mapped
    ctypedef enum CBLAS_ORDER:
        CblasRowMajor
        CblasColMajor
    ctypedef enum CBLAS_TRANSPOSE:
        CblasNoTrans
        CblasTrans

    void cblas_sgemm(CBLAS_ORDER order, CBLAS_TRANSPOSE trans_a, CBLAS_TRANSPOSE trans_b,
                     int M, int N, int K, float alpha, const float* A, int lda,
                     const float* B, int ldb, float beta, float* C, int ldc)

    void openblas_set_num_threads(int num_threads)
    int openblas_get_num_threads()
    char* openblas_get_config()
    char* openblas_get_corename()


cdef inline void gemm(bint trans_a, bint trans_b, int M, int N, int K,
                      float alpha, const float* A, int lda, const float* B, int ldb,
                      float beta, float* C, int ldc) noexcept nogil:
    """C[M, N] = alpha * op(A) @ op(B) + beta * C, all row-major.

    op(A) is [M, K] (A stored [K, M] when trans_a), op(B) is [K, N] (B stored
    [N, K] when trans_b); lda/ldb/ldc are row strides in elements.
    """
    cblas_sgemm(CblasRowMajor,
                CblasTrans if trans_a else CblasNoTrans,
                CblasTrans if trans_b else CblasNoTrans,
                M, N, K, alpha, A, lda, B, ldb, beta, C, ldc)
