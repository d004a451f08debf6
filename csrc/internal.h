/* Internal to the C core: shared between its translation units, never exported. */
#ifndef SHARDSCAN_INTERNAL_H
#define SHARDSCAN_INTERNAL_H

#include <setjmp.h>
#include <stdarg.h>
#include <sys/mman.h>

#include "shardscan.h"

struct ss_file {
    const uint8_t *data; /* NULL when size == 0 */
    uint64_t size;
};

/* SIGBUS guard. While a thread has `ss_guard_jump` pointing at a sigjmp_buf, a SIGBUS on that
 * thread (a mapped file shrank under us) jumps there instead of killing the process. Set it in
 * a frame of its own that nothing live crosses (see guarded_copy in file.c), and clear it there. */
extern __thread sigjmp_buf *ss_guard_jump;
/* Installs the handler, or re-arms it if another library replaced it since; cheap when armed. */
void ss_guard_install(void);

/* Asks the kernel to read [offset, offset + len) of the file in, without waiting for it. */
void ss_file_prefetch(const ss_file *file, uint64_t offset, uint64_t len);

/* Formats err->message (what is wrong, never the path: the caller knows which file it asked
 * about) and sets err->status; returns status. */
ss_status ss_fail(ss_error *err, ss_status status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Writes a printable, length-capped rendering of a tensor name into out (for messages). */
void ss_quote_name(char *out, size_t cap, const char *name, size_t len);

/* 1 if s[0..n) is well-formed UTF-8 (no overlong forms, surrogates or code points past U+10FFFF). */
int ss_utf8_valid(const unsigned char *s, size_t n);

/* Value counts over a job's logical little-endian bytes (values.c), fed in pieces of any
 * length: an element cut between two pieces is carried over. */
typedef struct {
    uint32_t kind;     /* ss_value_kind */
    uint32_t carried;  /* bytes of a cut element in carry */
    uint8_t carry[8];
    uint64_t nan, inf;
    int nonzero;       /* some byte was not zero */
} ss_values;
/* Bytes per counted element (a complex kind counts each part): 0 for SS_VALUES_NONE and
 * for numbers out of range. */
uint32_t ss_value_width(uint32_t kind);
void ss_values_start(ss_values *v, uint32_t kind);
void ss_values_add(ss_values *v, const uint8_t *p, size_t n);

/* Drops our mapping of the whole pages inside [p, p + n) once they are read: the page cache
 * keeps the data, resident memory stays flat. */
static inline void ss_release_pages(const uint8_t *p, size_t n, size_t page) {
    uintptr_t lo = ((uintptr_t)p + page - 1) & ~(uintptr_t)(page - 1);
    uintptr_t hi = ((uintptr_t)p + n) & ~(uintptr_t)(page - 1);
    if (hi > lo) madvise((void *)lo, hi - lo, MADV_DONTNEED);
}

/* Maps [p, p + n) ahead of reading it in one call, and asks for the next window's pages (up
 * to `window` of the `left` bytes from p) to be read in, from disk on a cold cache, meanwhile.
 * A failed populate (a kernel without it, or a file that shrank) leaves the pages to fault
 * in as they are read, where the SIGBUS guard catches a shrink. */
static inline void ss_enter_window(const uint8_t *p, size_t n, uint64_t left, size_t window, size_t page) {
    uintptr_t page_mask = (uintptr_t)page - 1;
    uintptr_t start = (uintptr_t)p & ~page_mask, end = (uintptr_t)p + n;
    if (left > n) {
        uintptr_t next = (end + page_mask) & ~page_mask;
        size_t ahead = left - n < window ? (size_t)(left - n) : window;
        if (next < end + ahead) madvise((void *)next, end + ahead - next, MADV_WILLNEED);
    }
#ifdef MADV_POPULATE_READ
    madvise((void *)start, end - start, MADV_POPULATE_READ);
#endif
}

/* Overflow-checked arithmetic: return 0 on overflow. */
static inline int ss_add_u64(uint64_t a, uint64_t b, uint64_t *out) { return !__builtin_add_overflow(a, b, out); }
static inline int ss_mul_u64(uint64_t a, uint64_t b, uint64_t *out) { return !__builtin_mul_overflow(a, b, out); }

#endif
