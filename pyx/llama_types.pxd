# cython: language_level=3
"""Weight descriptors of cmlp._llama (structs shared by its tasks and engine)."""

from cmlp._wkernels cimport wk_weight

cdef struct Linear:
    const void* data        # [N, K] row-major, as stored by HF (y = x W^T)
    int dtype               # LLAMA_F32 / LLAMA_BF16 / LLAMA_F16 / LLAMA_I8
    long N
    long K
    const float* bias       # [N] float32, or NULL
    wk_weight wk            # the same weight for cmlp._wkernels (bf16/f16/int8 path)


cdef struct LayerWeights:
    const float* input_norm     # [C] float32 (RMSNorm weights are widened at load)
    const float* post_norm      # [C]
    Linear q                    # [H*D, C]
    Linear k                    # [KVH*D, C]
    Linear v                    # [KVH*D, C]
    Linear o                    # [C, H*D]
    Linear gate                 # [I, C]
    Linear up                   # [I, C]
    Linear down                 # [C, I]
