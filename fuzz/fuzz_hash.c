/* libFuzzer target: ss_hash_batch over a small in-memory file and a few decoded jobs (runs,
 * strided views, byte swaps, CRCs). Every job the engine accepts must hash exactly the bytes
 * a naive walk of the same view gives; every job it refuses must say why.
 *
 * The value counts are checked against the C library's isnan/isinf on each element widened to
 * float or double.
 *
 * Input: byte 0 = jobs - 1 (bits 0-1) and "two threads" (bit 2); per job a flags byte, an
 * itemsize byte (% 17), a value-kind byte (% (SS_VALUE_KIND_COUNT + 1): one past the last is
 * invalid), a segment-count byte (% 4), then its segments: none means one run
 * (offset u16, length u16); each segment is ndim (% 5), offset u16, then a length u16 for
 * ndim 0 or, per dimension, a shape (int8 % 8) and a stride (int16). The rest is the file. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memfd_create */
#endif
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <xxhash.h>

#include "internal.h"

#define MAX_JOBS 4
#define MAX_SEGMENTS 3

typedef struct {
    const uint8_t *p;
    size_t left;
} reader;

/* The oracle's CRC-32 (zip's: reflected polynomial 0xEDB88320), one bit at a time: slow and
 * plainly right, and independent of the library the engine takes its CRC from. */
static uint32_t crc32_bitwise(const uint8_t *p, size_t n) {
    uint32_t crc = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) {
        crc ^= p[i];
        for (int k = 0; k < 8; k++) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
    }
    return ~crc;
}

static unsigned take(reader *r, int nbytes) {
    unsigned v = 0;
    for (int i = 0; i < nbytes && r->left; i++, r->left--) v |= (unsigned)*r->p++ << (8 * i);
    return v;
}

static void decode_segment(reader *r, ss_segment *seg) {
    memset(seg, 0, sizeof *seg);
    seg->ndim = take(r, 1) % 5;
    seg->offset = take(r, 2);
    if (!seg->ndim) seg->nbytes = take(r, 2);
    for (uint32_t d = 0; d < seg->ndim; d++) {
        seg->shape[d] = (int8_t)take(r, 1) % 8;
        seg->strides[d] = (int16_t)take(r, 2);
    }
}

/* The logical bytes of an accepted segment, appended to out, by the plainest walk there is. */
static size_t walk(const uint8_t *file, const ss_segment *seg, uint32_t itemsize, uint32_t d, uint64_t at, uint8_t *out) {
    if (d == seg->ndim) {
        memcpy(out, file + at, itemsize);
        return itemsize;
    }
    size_t n = 0;
    for (int64_t i = 0; i < seg->shape[d]; i++) n += walk(file, seg, itemsize, d + 1, at + (uint64_t)(i * seg->strides[d]), out + n);
    return n;
}

/* Widens one little-endian element of `kind` to a double, the slow and obvious way. */
static double widen(const uint8_t *p, uint32_t kind) {
    uint32_t u32 = 0;
    float f;
    double d;
    switch (kind) {
    case SS_VALUES_F64:
    case SS_VALUES_C128:
        memcpy(&d, p, 8);
        return d;
    case SS_VALUES_F32:
    case SS_VALUES_C64:
        memcpy(&f, p, 4);
        return f;
    case SS_VALUES_BF16: /* the top half of a float32 */
        u32 = (uint32_t)p[0] << 16 | (uint32_t)p[1] << 24;
        memcpy(&f, &u32, 4);
        return f;
    case SS_VALUES_F8_E5M2: /* the top half of a float16 */
        u32 = (uint32_t)p[0] << 8;
        /* fall through */
    case SS_VALUES_F16: {
        if (kind == SS_VALUES_F16) u32 = p[0] | (uint32_t)p[1] << 8;
        uint32_t exponent = (u32 >> 10) & 31, mantissa = u32 & 1023;
        if (exponent == 31) return mantissa ? NAN : INFINITY;
        return ldexp((double)(exponent ? mantissa | 1024 : mantissa), (int)(exponent ? exponent : 1) - 25);
    }
    case SS_VALUES_F8_E4M3FN: /* S.1111.111 is its only NaN; it has no Inf */
        return (p[0] & 0x7F) == 0x7F ? NAN : 0.0;
    }
    return 0.0; /* SS_VALUES_NONE: nothing to count */
}

static void check_values(const ss_job *job, const uint8_t *bytes, size_t n) {
    int nonzero = 0;
    for (size_t i = 0; i < n; i++) nonzero |= bytes[i];
    if (job->all_zero != !nonzero) abort();
    uint32_t width = ss_value_width(job->value_kind);
    uint64_t nan = 0, inf = 0;
    if (width && n % width) abort(); /* accepted a partial element */
    for (size_t i = 0; width && i < n; i += width) {
        double v = widen(bytes + i, job->value_kind);
        nan += isnan(v) != 0;
        inf += isinf(v) != 0;
    }
    if (job->nan_count != nan || job->inf_count != inf) abort();
}

static void check_result(const uint8_t *file, const ss_job *job, const ss_segment *segs, uint8_t *expected) {
    if (job->status != SS_OK) {
        if (!job->message[0] || (job->status != SS_E_ARGUMENT && job->status != SS_E_RANGE)) abort();
        return;
    }
    size_t n = 0;
    for (uint32_t i = 0; i < (job->nsegments ? job->nsegments : 1); i++) {
        const ss_segment *seg = job->nsegments ? &segs[i] : NULL;
        if (!seg) {
            if (job->nbytes) memcpy(expected, file + job->offset, job->nbytes);
            n += job->nbytes;
        } else if (!seg->ndim) {
            if (seg->nbytes) memcpy(expected + n, file + seg->offset, seg->nbytes);
            n += seg->nbytes;
        } else {
            n += walk(file, seg, job->itemsize, 0, seg->offset, expected + n);
        }
    }
    if ((job->flags & SS_JOB_CRC32) && job->crc32 != crc32_bitwise(expected, n)) abort();
    if (job->flags & SS_JOB_BYTESWAP) {
        if (n % job->itemsize) abort(); /* accepted a partial element */
        for (size_t i = 0; i < n; i += job->itemsize)
            for (uint32_t a = 0, b = job->itemsize - 1; a < b; a++, b--) {
                uint8_t t = expected[i + a];
                expected[i + a] = expected[i + b];
                expected[i + b] = t;
            }
    }
    check_values(job, expected, n);
    XXH128_canonical_t want;
    XXH128_canonicalFromHash(&want, XXH3_128bits(expected, n));
    if (memcmp(want.digest, job->digest, 16)) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    reader r = {data, size};
    unsigned head = take(&r, 1);
    uint32_t njobs = 1 + (head & 3), threads = head & 4 ? 2 : 1;
    ss_job jobs[MAX_JOBS];
    ss_segment segs[MAX_JOBS][MAX_SEGMENTS];
    memset(jobs, 0, sizeof jobs);
    for (uint32_t j = 0; j < njobs; j++) {
        jobs[j].flags = take(&r, 1);
        jobs[j].itemsize = take(&r, 1) % 17;
        jobs[j].value_kind = take(&r, 1) % (SS_VALUE_KIND_COUNT + 1);
        jobs[j].nsegments = take(&r, 1) % (MAX_SEGMENTS + 1);
        jobs[j].segments = jobs[j].nsegments ? segs[j] : NULL;
        if (!jobs[j].nsegments) {
            jobs[j].offset = take(&r, 2);
            jobs[j].nbytes = take(&r, 2);
        }
        for (uint32_t i = 0; i < jobs[j].nsegments; i++) decode_segment(&r, &segs[j][i]);
    }
    /* A real shared mapping, as ss_file_open makes: the engine drops pages it has hashed, which
     * on a heap copy would zero them. */
    static int fd = -1;
    if (fd < 0) fd = memfd_create("fuzz_hash", 0);
    if (fd < 0 || ftruncate(fd, 0) || (r.left && pwrite(fd, r.p, r.left, 0) != (ssize_t)r.left)) abort();
    ss_file file = {.data = NULL, .size = r.left};
    if (r.left) {
        void *map = mmap(NULL, r.left, PROT_READ, MAP_SHARED, fd, 0);
        if (map == MAP_FAILED) abort();
        file.data = map;
    }
    ss_file *files[1] = {&file};
    if (ss_hash_batch(files, 1, jobs, njobs, threads, NULL) != SS_OK) abort();
    uint8_t *expected = malloc(MAX_SEGMENTS * (65536 + 7 * 7 * 7 * 7 * 16));
    if (!expected) abort();
    for (uint32_t j = 0; j < njobs; j++) check_result(r.p, &jobs[j], segs[j], expected);
    free(expected);
    if (file.data) munmap((void *)file.data, file.size);
    return 0;
}
