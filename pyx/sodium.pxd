# cython: language_level=3
"""The libsodium calls cmlp's Cython code makes (extern declarations only)."""

cdef extern from "sodium.h" nogil:
    int sodium_init()
    const char* sodium_version_string()
    void sodium_memzero(void* pnt, size_t len)
    int sodium_memcmp(const void* b1, const void* b2, size_t len)
    void randombytes_buf(void* buf, size_t size)

    int crypto_aead_chacha20poly1305_ietf_encrypt_detached(
        unsigned char* c, unsigned char* mac, unsigned long long* maclen_p,
        const unsigned char* m, unsigned long long mlen,
        const unsigned char* ad, unsigned long long adlen,
        const unsigned char* nsec, const unsigned char* npub, const unsigned char* k)
    int crypto_aead_chacha20poly1305_ietf_decrypt_detached(
        unsigned char* m, unsigned char* nsec,
        const unsigned char* c, unsigned long long clen, const unsigned char* mac,
        const unsigned char* ad, unsigned long long adlen,
        const unsigned char* npub, const unsigned char* k)
    int crypto_aead_chacha20poly1305_ietf_encrypt(
        unsigned char* c, unsigned long long* clen_p,
        const unsigned char* m, unsigned long long mlen,
        const unsigned char* ad, unsigned long long adlen,
        const unsigned char* nsec, const unsigned char* npub, const unsigned char* k)
    int crypto_aead_chacha20poly1305_ietf_decrypt(
        unsigned char* m, unsigned long long* mlen_p, unsigned char* nsec,
        const unsigned char* c, unsigned long long clen,
        const unsigned char* ad, unsigned long long adlen,
        const unsigned char* npub, const unsigned char* k)
