/* Whole-file digests: SHA-256 (OpenSSL's EVP interface, which uses the CPU's SHA extensions)
 * and XXH3-128 of every byte of each file, one file per worker thread, largest files first.
 *
 * XXH3 only when asked for.
 *
 * Like the hashing engine, it reads straight from the read-only mapping in windows, asks the
 * kernel for the next window ahead of time and drops its mapping of each window once digested,
 * so resident memory stays bounded; both digests take each chunk while it is in L2. A file
 * that shrinks under the mapping faults into the SIGBUS guard and fails alone. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "xxh3.h"

#include "internal.h"

#define WINDOW (8u << 20) /* bytes digested between two releases of pages */
#define CHUNK (256u << 10) /* both digests of a chunk while it is in L2 */
#define PAGE_STEP 4096u /* SHA-256 steps of one page, each prefetching one further ahead */
#define PREFETCH_AHEAD (16u << 10) /* four pages */

typedef struct {
    ss_file *const *files;
    ss_file_digest *out;
    uint32_t *order; /* file indices, largest first */
    uint32_t nfiles;
    uint32_t next;   /* next position in order; taken with __atomic_fetch_add */
    size_t page;
    uint64_t *progress;
    int xxh3; /* also XXH3-128: SHA-256 alone is what a published digest is checked against */
} digest_batch;

static void digest_windows(const digest_batch *b, const ss_file *f, EVP_MD_CTX *sha, XXH3_state_t *xxh) {
    const uint8_t *p = f->data;
    uint64_t left = f->size;
    while (left) {
        size_t len = left < WINDOW ? (size_t)left : WINDOW;
        ss_enter_window(p, len, left, WINDOW, b->page);
        for (size_t at = 0; at < len; at += CHUNK) {
            size_t n = len - at < CHUNK ? len - at : CHUNK;
            /* The page cache's pages are scattered in memory, so the CPU's own prefetcher stops
             * at each page's end and SHA-256 would wait on every new page: ask for the lines a
             * few pages ahead, one page per step. */
            for (size_t step = 0; step < n; step += PAGE_STEP) {
                const uint8_t *ahead = p + at + step + PREFETCH_AHEAD;
                if (ahead + PAGE_STEP <= p + len)
                    for (size_t line = 0; line < PAGE_STEP; line += 64) __builtin_prefetch(ahead + line);
                size_t m = n - step < PAGE_STEP ? n - step : PAGE_STEP;
                EVP_DigestUpdate(sha, p + at + step, m);
            }
            if (xxh) hash_update(xxh, p + at, n);
        }
        ss_release_pages(p, len, b->page);
        if (b->progress) __atomic_fetch_add(b->progress, len, __ATOMIC_RELAXED);
        p += len;
        left -= len;
    }
}

/* sigsetjmp's frame: nothing that changes is used after a jump but `out`. */
static void digest_one(const digest_batch *b, const ss_file *f, ss_file_digest *out, EVP_MD_CTX *sha) {
    XXH3_state_t xxh;
    XXH3_INITSTATE(&xxh);
    XXH3_128bits_reset(&xxh);
    out->size = f->size;
    if (EVP_DigestInit_ex(sha, EVP_sha256(), NULL) != 1) {
        out->status = SS_E_IO;
        snprintf(out->message, sizeof out->message, "OpenSSL could not start a SHA-256 digest");
        return;
    }
    sigjmp_buf jump;
    if (sigsetjmp(jump, 0)) {
        ss_guard_jump = NULL;
        out->status = SS_E_CHANGED;
        snprintf(out->message, sizeof out->message, "file shrank while being read");
        return;
    }
    ss_guard_jump = &jump;
    digest_windows(b, f, sha, b->xxh3 ? &xxh : NULL);
    ss_guard_jump = NULL;
    unsigned int sha_len = 0;
    EVP_DigestFinal_ex(sha, out->sha256, &sha_len);
    if (b->xxh3) {
        XXH128_canonical_t canonical;
        XXH128_canonicalFromHash(&canonical, XXH3_128bits_digest(&xxh));
        memcpy(out->xxh3, canonical.digest, 16);
    }
    out->status = sha_len == 32 ? SS_OK : SS_E_IO;
    if (out->status) snprintf(out->message, sizeof out->message, "OpenSSL returned a %u-byte SHA-256", sha_len);
}

static void *digest_worker(void *arg) {
    digest_batch *b = arg;
    EVP_MD_CTX *sha = EVP_MD_CTX_new();
    for (;;) {
        uint32_t at = __atomic_fetch_add(&b->next, 1, __ATOMIC_RELAXED);
        if (at >= b->nfiles) break;
        uint32_t i = b->order[at];
        ss_file_digest *out = &b->out[i];
        if (!b->files[i]) {
            out->status = SS_E_ARGUMENT;
            snprintf(out->message, sizeof out->message, "no file");
        } else if (!sha) {
            out->status = SS_E_NOMEM;
            snprintf(out->message, sizeof out->message, "out of memory");
        } else {
            digest_one(b, b->files[i], out, sha);
        }
    }
    EVP_MD_CTX_free(sha);
    return NULL;
}

typedef struct {
    uint64_t size;
    uint32_t index;
} sized_file;

static int largest_file_first(const void *a, const void *b) {
    const sized_file *x = a, *y = b;
    if (x->size != y->size) return x->size > y->size ? -1 : 1;
    return (x->index > y->index) - (x->index < y->index);
}

ss_status ss_digest_files(ss_file *const *files, uint32_t nfiles, ss_file_digest *out, int xxh3, uint32_t threads,
                          uint64_t *progress) {
    if (nfiles && (!files || !out)) return SS_E_ARGUMENT;
    if (nfiles == 0) return SS_OK;
    ss_guard_install();
    digest_batch b = {.files = files, .out = out, .nfiles = nfiles, .page = (size_t)sysconf(_SC_PAGESIZE),
                      .progress = progress, .xxh3 = xxh3};
    sized_file *sizes = malloc(nfiles * sizeof *sizes);
    b.order = malloc(nfiles * sizeof *b.order);
    if (!sizes || !b.order) {
        free(sizes);
        free(b.order);
        return SS_E_NOMEM;
    }
    for (uint32_t i = 0; i < nfiles; i++) {
        memset(&out[i], 0, sizeof out[i]);
        sizes[i] = (sized_file){files[i] ? files[i]->size : 0, i};
    }
    qsort(sizes, nfiles, sizeof *sizes, largest_file_first);
    for (uint32_t i = 0; i < nfiles; i++) b.order[i] = sizes[i].index;
    free(sizes);
    if (threads == 0) {
        long online = sysconf(_SC_NPROCESSORS_ONLN);
        threads = online > 0 ? (uint32_t)online : 1;
    }
    if (threads > nfiles) threads = nfiles;
    if (threads > 256) threads = 256;
#if defined(__x86_64__) || defined(__i386__)
    (void)XXH3_128bits_dispatch(NULL, 0); /* pick the SIMD variant before the workers race to */
#endif
    pthread_t tids[256];
    uint32_t started = 0;
    for (uint32_t t = 1; t < threads; t++) { /* thread 0 is the caller */
        if (pthread_create(&tids[started], NULL, digest_worker, &b) != 0) break;
        started++;
    }
    digest_worker(&b);
    for (uint32_t t = 0; t < started; t++) pthread_join(tids[t], NULL);
    free(b.order);
    return SS_OK;
}
