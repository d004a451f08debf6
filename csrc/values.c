/* Value counts for the hashing pass: NaN and +-Inf of floating elements, and whether every
 * byte is zero, over the little-endian logical bytes the hash sees, while they are in cache.
 *
 * Every float kind here marks NaN and Inf by its magnitude (the value without its sign bit):
 * Inf is one magnitude, NaN every magnitude above it (IEEE formats, E5M2), or one magnitude
 * with no Inf (E4M3FN: S.1111.111). So one compare of the magnitude against the smallest
 * special one tells whether a block holds anything to count. Blocks of 4 KiB are first
 * scanned for their largest magnitude alone (two vector operations per vector: and, max),
 * and only a block with a special value is counted exactly. Lanes are signed: a magnitude is
 * never negative, so signed compares are exact, and they are the ones x86 vector ISAs have.
 * Whether every byte is zero needs an OR only until the first byte that is not.
 * target_clones builds each loop for AVX-512, AVX2 and the baseline, picked once at load time. */
#define _GNU_SOURCE
#include <stdint.h>
#include <string.h>

#include "internal.h"

/* Per kind: lane width, magnitude mask, Inf magnitude (-1: none), NaN when magnitude > nan_above. */
typedef struct {
    uint32_t width;
    int64_t mask, inf, nan_above;
} kind_params;

static const kind_params KINDS[SS_VALUE_KIND_COUNT] = {
    [SS_VALUES_NONE] = {0, 0, -1, 0},
    [SS_VALUES_F64] = {8, INT64_MAX, 0x7FF0000000000000, 0x7FF0000000000000},
    [SS_VALUES_F32] = {4, 0x7FFFFFFF, 0x7F800000, 0x7F800000},
    [SS_VALUES_F16] = {2, 0x7FFF, 0x7C00, 0x7C00},
    [SS_VALUES_BF16] = {2, 0x7FFF, 0x7F80, 0x7F80},
    [SS_VALUES_F8_E5M2] = {1, 0x7F, 0x7C, 0x7C},
    [SS_VALUES_F8_E4M3FN] = {1, 0x7F, -1, 0x7E},
    [SS_VALUES_C64] = {4, 0x7FFFFFFF, 0x7F800000, 0x7F800000},   /* each part a float32 */
    [SS_VALUES_C128] = {8, INT64_MAX, 0x7FF0000000000000, 0x7FF0000000000000},
};

#define BLOCK 4096 /* bytes scanned between two looks at whether anything needs counting */
#if defined(__x86_64__)
#define CLONES __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#else
#define CLONES
#endif

typedef struct {
    uint64_t nan, inf, nonzero;
} tally;

/* One kernel per lane width over p[0, n), n a multiple of BLOCK. The loops are plain C over a
 * block of known length, so the compiler vectorizes them for each clone's own vector width
 * (GCC's generic vector types would fall back to scalar compares where the type is wider
 * than the target's registers). */
#define EXACT_RUN 128 /* elements counted in lane-wide counters before they are summed */
#define DEFINE_KERNEL(name, T, UT)                                                             \
    /* Counts one block exactly (and ORs its bytes); returns whether it held a special value. */ \
    CLONES static int name##_exact(const uint8_t *p, const kind_params *k, tally *t) {         \
        T mask = (T)k->mask, nan_above = (T)k->nan_above, inf = (T)k->inf, any = 0;             \
        uint64_t found = 0;                                                                     \
        for (size_t run = 0; run < BLOCK; run += EXACT_RUN * sizeof(T)) {                       \
            UT nan_count = 0, inf_count = 0; /* at most EXACT_RUN: fits even 8-bit lanes */     \
            for (size_t i = 0; i < EXACT_RUN; i++) {                                            \
                T x;                                                                            \
                memcpy(&x, p + run + i * sizeof(T), sizeof(T));                                 \
                any |= x;                                                                       \
                x &= mask;                                                                      \
                nan_count += x > nan_above;                                                     \
                inf_count += x == inf;                                                          \
            }                                                                                   \
            t->nan += nan_count;                                                                \
            t->inf += inf_count;                                                                \
            found += (uint64_t)nan_count + inf_count;                                           \
        }                                                                                       \
        t->nonzero |= (uint64_t)(any != 0);                                                     \
        return found != 0;                                                                      \
    }                                                                                           \
    /* The largest magnitude in a block says whether it needs counting; the OR of its bytes     \
     * is taken only until some byte is not zero, which for real data is the first block. A     \
     * block after one that held special values is counted straight away: where there is one    \
     * NaN there are often many (a diverged tensor), and scanning first would only add work. */ \
    CLONES static void name(const uint8_t *p, size_t n, const kind_params *k, tally *t) {       \
        T mask = (T)k->mask, special_from = (T)(k->inf >= 0 ? k->inf : k->nan_above + 1);       \
        T nonzero = (T)(t->nonzero != 0);                                                       \
        int hot = 0;                                                                            \
        for (size_t at = 0; at < n; at += BLOCK) {                                              \
            if (hot) {                                                                          \
                hot = name##_exact(p + at, k, t);                                               \
                continue;                                                                       \
            }                                                                                   \
            T top = 0;                                                                          \
            if (nonzero) {                                                                      \
                for (size_t i = 0; i < BLOCK / sizeof(T); i++) {                                \
                    T x;                                                                        \
                    memcpy(&x, p + at + i * sizeof(T), sizeof(T));                              \
                    x &= mask;                                                                  \
                    top = x > top ? x : top;                                                    \
                }                                                                               \
            } else {                                                                            \
                for (size_t i = 0; i < BLOCK / sizeof(T); i++) {                                \
                    T x;                                                                        \
                    memcpy(&x, p + at + i * sizeof(T), sizeof(T));                              \
                    nonzero |= x;                                                               \
                    x &= mask;                                                                  \
                    top = x > top ? x : top;                                                    \
                }                                                                               \
            }                                                                                   \
            if (top >= special_from) hot = name##_exact(p + at, k, t);                          \
        }                                                                                       \
        t->nonzero |= (uint64_t)(nonzero != 0);                                                 \
    }

DEFINE_KERNEL(lanes64, int64_t, uint64_t)
DEFINE_KERNEL(lanes32, int32_t, uint32_t)
DEFINE_KERNEL(lanes16, int16_t, uint16_t)
DEFINE_KERNEL(lanes8, int8_t, uint8_t)

CLONES static uint64_t or_bytes(const uint8_t *p, size_t n) {
    uint64_t any = 0;
    for (size_t at = 0; at < n; at += BLOCK)
        for (size_t i = 0; i < BLOCK / 8; i++) {
            uint64_t x;
            memcpy(&x, p + at + i * 8, 8);
            any |= x;
        }
    return any;
}

/* One element of `width` bytes (little-endian), counted the plain way. */
static void count_one(const uint8_t *p, const kind_params *k, tally *t) {
    uint64_t raw = 0;
    memcpy(&raw, p, k->width); /* the host is little-endian, as the stream is */
    int64_t magnitude = (int64_t)(raw & (uint64_t)k->mask);
    t->nan += magnitude > k->nan_above;
    t->inf += magnitude == k->inf;
}

const char *ss_value_kind_name(uint32_t kind) {
    switch (kind) {
#define SS_KIND_NAME_CASE(name, number, torch_name) \
    case name:                                      \
        return torch_name;
        SS_VALUE_KIND_LIST(SS_KIND_NAME_CASE)
#undef SS_KIND_NAME_CASE
    }
    return NULL;
}

uint32_t ss_value_width(uint32_t kind) { return kind < SS_VALUE_KIND_COUNT ? KINDS[kind].width : 0; }

void ss_values_start(ss_values *v, uint32_t kind) {
    memset(v, 0, sizeof *v);
    v->kind = kind < SS_VALUE_KIND_COUNT ? kind : SS_VALUES_NONE;
}

/* Whole elements of p[0, n), n a multiple of the width (or any n for kind none). */
static void count_elements(ss_values *v, const uint8_t *p, size_t n) {
    const kind_params *k = &KINDS[v->kind];
    if (!k->width && v->nonzero) return; /* nothing left to learn */
    tally t = {0, 0, (uint64_t)v->nonzero};
    size_t body = n - n % BLOCK;
    switch (k->width) {
    case 8: lanes64(p, body, k, &t); break;
    case 4: lanes32(p, body, k, &t); break;
    case 2: lanes16(p, body, k, &t); break;
    case 1: lanes8(p, body, k, &t); break;
    default: t.nonzero |= or_bytes(p, body); break;
    }
    for (size_t i = body; i < n; i++) t.nonzero |= p[i];
    if (k->width)
        for (size_t i = body; i < n; i += k->width) count_one(p + i, k, &t);
    v->nan += t.nan;
    v->inf += t.inf;
    v->nonzero |= t.nonzero != 0;
}

void ss_values_add(ss_values *v, const uint8_t *p, size_t n) {
    uint32_t width = KINDS[v->kind].width;
    if (width <= 1) {
        count_elements(v, p, n);
        return;
    }
    /* An element cut by the end of the previous piece: complete it first. */
    if (v->carried) {
        size_t take = width - v->carried < n ? width - v->carried : n;
        memcpy(v->carry + v->carried, p, take);
        v->carried += (uint32_t)take;
        p += take;
        n -= take;
        if (v->carried < width) return;
        count_elements(v, v->carry, width);
        v->carried = 0;
    }
    size_t whole = n - n % width;
    count_elements(v, p, whole);
    memcpy(v->carry, p + whole, n - whole);
    v->carried = (uint32_t)(n - whole);
}
