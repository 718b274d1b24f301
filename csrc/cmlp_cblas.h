/* The CBLAS that cmlp calls (pyx/blas.pxd cimports this header, not cblas.h).
 *
 * The system OpenBLAS exports the standard names.  The scipy-openblas32 wheel
 * (setup.py: CMLP_BLAS=scipy-openblas32) exports them with a "scipy_" prefix, so
 * that it can sit next to another OpenBLAS in one process: map the few names cmlp
 * uses onto it here, in one place.
 */
#ifndef CMLP_CBLAS_H
#define CMLP_CBLAS_H

#ifdef CMLP_SCIPY_OPENBLAS
#define cblas_sgemm scipy_cblas_sgemm
#define openblas_set_num_threads scipy_openblas_set_num_threads
#define openblas_get_num_threads scipy_openblas_get_num_threads
#define openblas_get_config scipy_openblas_get_config
#define openblas_get_corename scipy_openblas_get_corename
#endif

#include <cblas.h>

#endif
