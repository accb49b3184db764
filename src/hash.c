/* qhash64, version 1: the tensor checksum of .qbin files.
 *
 * The exact algorithm is specified in docs/qbin-format.md ("Checksum"); any
 * change here changes every checksum ever written, so it needs a new format
 * version. Shape of the design:
 *   - four independent 64-bit lanes eat 32-byte stripes (one little-endian
 *     word each), so the multiply latencies of the lanes overlap;
 *   - each word is pre-mixed off the lane's dependency chain (an xor-shift
 *     brings its high bits down so that all of them reach the multiply, and
 *     an added constant keeps an all-zero lane from staying zero on zero
 *     input), then folded in with xor, multiply by an odd constant, rotate:
 *     5 cycles of latency per lane and one multiply per 8 bytes. For a
 *     fixed word each lane update is a bijection of the lane, so distinct
 *     states never merge within one stripe;
 *   - a short tail is zero-padded to a full stripe; the total length goes
 *     into the finalizer, which tells padded tails apart;
 *   - the finalizer avalanches each lane, chains them in order and
 *     avalanches the result. */
#include "hash.h"

#include <string.h>

#define K0 0xd1a6e55e9b9b1325ull
#define K1 0xcf0c26ef4243ed53ull
#define K2 0xb37523a53b4a3ee3ull
#define K3 0x9823beb1e6ba3ad7ull
#define K4 0xaed09b824ca87fc3ull
#define K5 0xd330a5494d14cf1bull
#define K6 0xdb18bd763f20134dull
#define K7 0xbf416c30f1f0742bull

static inline uint64_t rotl64(uint64_t x, unsigned r) { return (x << r) | (x >> (64 - r)); }

/* Little-endian load regardless of the host, so checksums are portable. */
static inline uint64_t load_le64(const unsigned char *p)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
#else
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
#endif
}

static inline uint64_t lane_round(uint64_t acc, uint64_t v)
{
    uint64_t x = (v ^ (v >> 29)) + K2;
    return rotl64((acc ^ x) * K1, 29);
}

static inline uint64_t fmix(uint64_t z)
{
    z ^= z >> 32;
    z *= K5;
    z ^= z >> 29;
    z *= K6;
    z ^= z >> 32;
    return z;
}

/* Process whole stripes; returns the number of bytes consumed. Lanes live
 * in locals so the compiler keeps them in registers. */
static size_t consume_stripes(uint64_t lane[4], const unsigned char *p, size_t len)
{
    uint64_t a = lane[0], b = lane[1], c = lane[2], d = lane[3];
    size_t n = len & ~(size_t)31;
    for (size_t i = 0; i < n; i += 32) {
        a = lane_round(a, load_le64(p + i));
        b = lane_round(b, load_le64(p + i + 8));
        c = lane_round(c, load_le64(p + i + 16));
        d = lane_round(d, load_le64(p + i + 24));
    }
    lane[0] = a, lane[1] = b, lane[2] = c, lane[3] = d;
    return n;
}

void qhash_init(qhash_state *s)
{
    s->lane[0] = K4;
    s->lane[1] = K5;
    s->lane[2] = K6;
    s->lane[3] = K7;
    s->total = 0;
    s->buffered = 0;
    memset(s->buf, 0, sizeof s->buf);
}

void qhash_update(qhash_state *s, const void *data, size_t len)
{
    const unsigned char *p = data;
    if (len == 0)
        return;
    s->total += (uint64_t)len;
    if (s->buffered) {
        size_t take = 32 - s->buffered;
        if (take > len)
            take = len;
        memcpy(s->buf + s->buffered, p, take);
        s->buffered += (unsigned)take;
        p += take;
        len -= take;
        if (s->buffered < 32)
            return;
        consume_stripes(s->lane, s->buf, 32);
        s->buffered = 0;
    }
    size_t used = consume_stripes(s->lane, p, len);
    memcpy(s->buf, p + used, len - used);
    s->buffered = (unsigned)(len - used);
}

uint64_t qhash_final(const qhash_state *s)
{
    uint64_t lane[4];
    memcpy(lane, s->lane, sizeof lane);
    if (s->buffered) {
        unsigned char last[32] = {0};
        memcpy(last, s->buf, s->buffered);
        consume_stripes(lane, last, 32);
    }
    uint64_t h = s->total ^ K0;
    for (int i = 0; i < 4; i++)
        h = rotl64(h ^ fmix(lane[i]), 23) * K3;
    return fmix(h);
}

uint64_t qhash(const void *data, size_t len)
{
    qhash_state s;
    qhash_init(&s);
    qhash_update(&s, data, len);
    return qhash_final(&s);
}
