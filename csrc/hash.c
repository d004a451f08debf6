/* The hashing engine: a batch of jobs over mapped files, XXH3-128 on N pthreads.
 *
 * Why mmap and not pread: on a warm page cache, hashing straight from the mapping avoids a
 * copy per byte, and the copy costs more than the hash does. Resident memory stays bounded
 * because each worker maps one window of its file at a time (MAPPED_BUDGET shared out between
 * the workers) and releases it with MADV_DONTNEED as soon as it is hashed: the page cache
 * keeps the data, only our mapping of it goes. Windows are as large as that budget allows
 * because each release is a TLB shootdown on every core running the process, a cost per
 * window, not per byte. A window's page tables are filled in one MADV_POPULATE_READ call
 * rather than by a fault per folio. A file that shrinks under us faults into the SIGBUS
 * guard, not a crash.
 *
 * The mapping is not marked MADV_HUGEPAGE, though what a cold scan reads in would then enter
 * the page cache in 2 MiB folios that every later reader maps faster (a warm scan right after
 * ran 1.5x faster): with the kernel's default defrag=madvise each huge folio may wait on memory
 * compaction, and on fragmented memory the cold scan itself ran up to 30% slower. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
/* ISA-L's CRC-32 folds 512 bits per instruction with VPCLMULQDQ where the CPU has it (and
 * falls back to PCLMUL or tables elsewhere); libdeflate, as Debian 12 ships it, folds 128, and
 * its CRC rather than memory bounded the hashing of torch.save records. */
#include <isa-l/crc.h>

#include "xxh3.h"

#include "internal.h"

#define MAPPED_BUDGET (96u << 20) /* bytes of windows mapped at once, all workers together */
#define WINDOW_MAX (64u << 20)     /* past this, larger windows no longer pay for their memory */
#define GATHER (1u << 20)          /* per-thread buffer for strided and byte-swapped data */

typedef struct {
    ss_file *const *files;
    uint32_t nfiles;
    ss_job *jobs;
    uint32_t *order; /* indices of the jobs check_job passed, largest first */
    uint32_t nrun;   /* entries in order */
    uint32_t next;   /* next position in order; taken with __atomic_fetch_add */
    size_t page;
    size_t window; /* bytes each worker maps at a time */
    uint64_t *progress;
} batch;

typedef struct {
    XXH3_state_t state;
    uint32_t crc;
    int with_crc;
    uint8_t *gather;
    size_t gathered;
    ss_values values;
} stream;

/* The hash pulls each chunk from memory into L1; the CRC and the counts then read it from
 * there. A chunk larger than L1 sends them to L2, a much smaller one breaks the hash's stream. */
#define CHUNK (32u << 10)

/* Hashes and counts n bytes of the logical stream (and CRCs them when the CRC is taken on
 * this side of the gather buffer, i.e. for plain contiguous runs). */
static void stream_bytes(stream *st, const uint8_t *p, size_t n, int with_crc) {
    while (n) {
        size_t len = n < CHUNK ? n : CHUNK;
        hash_update(&st->state, p, len);
        if (with_crc) st->crc = crc32_gzip_refl(st->crc, p, len);
        ss_values_add(&st->values, p, len);
        p += len;
        n -= len;
    }
}

static void flush_gather(stream *st) {
    stream_bytes(st, st->gather, st->gathered, 0);
    st->gathered = 0;
}

/* Appends n bytes to the gather buffer, reversing each `swap`-byte element when swap > 1.
 * The CRC covers the bytes as stored, in the order read, so it is taken here, before the swap. */
static void gather_bytes(stream *st, const uint8_t *p, size_t n, uint32_t swap) {
    if (st->with_crc) st->crc = crc32_gzip_refl(st->crc, p, n);
    while (n) {
        size_t room = GATHER - st->gathered;
        if (swap > 1) room -= room % swap;
        size_t take = n < room ? n : room;
        uint8_t *dst = st->gather + st->gathered;
        if (swap > 1) {
            for (size_t i = 0; i < take; i += swap)
                for (uint32_t k = 0; k < swap; k++) dst[i + k] = p[i + swap - 1 - k];
        } else {
            memcpy(dst, p, take);
        }
        st->gathered += take;
        p += take;
        n -= take;
        if (st->gathered + (swap > 1 ? swap : 1) > GATHER) flush_gather(st);
    }
}

/* Drops our mapping of the whole pages inside [p, p + n): they are hashed, keep RSS flat. */
static void release_pages(const batch *b, const uint8_t *p, size_t n) { ss_release_pages(p, n, b->page); }

static void stream_contiguous(const batch *b, stream *st, const uint8_t *p, uint64_t n, uint32_t swap) {
    while (n) {
        size_t len = n < b->window ? (size_t)n : b->window;
        ss_enter_window(p, len, n, b->window, b->page);
        if (swap > 1) {
            gather_bytes(st, p, len, swap);
            flush_gather(st);
        } else {
            stream_bytes(st, p, len, st->with_crc);
        }
        release_pages(b, p, len);
        if (b->progress) __atomic_fetch_add(b->progress, len, __ATOMIC_RELAXED);
        p += len;
        n -= len;
    }
}

/* Row-major walk of a strided view. The innermost dimension is one run when it is dense. */
static void stream_strided(stream *st, const uint8_t *base, const ss_segment *seg, uint32_t itemsize, uint32_t swap) {
    uint32_t nd = seg->ndim;
    int64_t index[SS_MAX_DIMS] = {0};
    int64_t inner = seg->shape[nd - 1], inner_stride = seg->strides[nd - 1];
    const uint8_t *row = base;
    for (;;) {
        if (inner_stride == (int64_t)itemsize) {
            gather_bytes(st, row, (size_t)inner * itemsize, swap);
        } else {
            for (int64_t i = 0; i < inner; i++) gather_bytes(st, row + i * inner_stride, itemsize, swap);
        }
        /* Advance the outer index like an odometer. */
        int d = (int)nd - 2;
        for (; d >= 0; d--) {
            row += seg->strides[d];
            if (++index[d] < seg->shape[d]) break;
            row -= seg->strides[d] * seg->shape[d];
            index[d] = 0;
        }
        if (d < 0) break;
    }
}

/* A job's segments: its own list, or its inline contiguous run written into *one. */
static const ss_segment *job_segments(const ss_job *job, ss_segment *one, uint32_t *count) {
    if (job->nsegments) {
        *count = job->nsegments;
        return job->segments;
    }
    memset(one, 0, sizeof *one);
    one->file = job->file;
    one->offset = job->offset;
    one->nbytes = job->nbytes;
    *count = 1;
    return one;
}

/* Formats job->message and returns status: check_job's one way out for a bad job. */
static ss_status reject(ss_job *job, ss_status status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static ss_status reject(ss_job *job, ss_status status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(job->message, sizeof job->message, fmt, ap);
    va_end(ap);
    return status;
}

/* Checks the fields that do not depend on the files: flags, element size, segment list. */
static ss_status check_job_fields(ss_job *job) {
    if (job->flags & ~(uint32_t)(SS_JOB_BYTESWAP | SS_JOB_CRC32))
        return reject(job, SS_E_ARGUMENT, "job has unknown flags 0x%x", job->flags);
    if (job->nsegments && !job->segments)
        return reject(job, SS_E_ARGUMENT, "job has %u segments but no segment list", job->nsegments);
    uint32_t size = job->itemsize;
    /* The swap loop reverses whole elements of these sizes only. */
    if ((job->flags & SS_JOB_BYTESWAP) && size != 2 && size != 4 && size != 8 && size != 16)
        return reject(job, SS_E_ARGUMENT, "byte-swapped job has %u-byte elements; must be 2, 4, 8 or 16", size);
    if (job->value_kind >= SS_VALUE_KIND_COUNT)
        return reject(job, SS_E_ARGUMENT, "job has unknown value kind %u", job->value_kind);
    return SS_OK;
}

/* Checks one segment against its file; *bytes receives its logical length. */
static ss_status check_segment(const batch *b, ss_job *job, uint32_t i, const ss_segment *seg, uint64_t *bytes) {
    if (seg->file >= b->nfiles) return reject(job, SS_E_ARGUMENT, "segment %u names file %u of %u", i, seg->file, b->nfiles);
    job->failed_file = seg->file;
    uint64_t last = seg->nbytes; /* extent past offset */
    *bytes = seg->nbytes;
    if (seg->ndim) {
        if (seg->ndim > SS_MAX_DIMS)
            return reject(job, SS_E_ARGUMENT, "segment %u has %u dimensions; at most %u", i, seg->ndim, SS_MAX_DIMS);
        if (job->itemsize == 0) return reject(job, SS_E_ARGUMENT, "strided segment %u has 0-byte elements", i);
        uint64_t numel = 1, reach = 0, step;
        for (uint32_t d = 0; d < seg->ndim; d++) {
            if (seg->shape[d] < 0 || seg->strides[d] < 0)
                return reject(job, SS_E_ARGUMENT, "segment %u dimension %u has shape %lld, stride %lld; both must be >= 0",
                              i, d, (long long)seg->shape[d], (long long)seg->strides[d]);
            if (!ss_mul_u64(numel, (uint64_t)seg->shape[d], &numel))
                return reject(job, SS_E_ARGUMENT, "segment %u: element count overflows 64 bits", i);
            if (seg->shape[d] == 0) continue;
            if (!ss_mul_u64((uint64_t)(seg->shape[d] - 1), (uint64_t)seg->strides[d], &step) ||
                !ss_add_u64(reach, step, &reach))
                return reject(job, SS_E_RANGE, "segment %u: extent overflows 64 bits", i);
        }
        if (!ss_mul_u64(numel, job->itemsize, bytes))
            return reject(job, SS_E_ARGUMENT, "segment %u: byte length overflows 64 bits", i);
        if (numel && !ss_add_u64(reach, job->itemsize, &last))
            return reject(job, SS_E_RANGE, "segment %u: extent overflows 64 bits", i);
        if (!numel) last = 0;
    } else if (job->itemsize > 1 && seg->nbytes % job->itemsize) {
        /* A run must hold whole elements: the swap loop would read past a partial last one. */
        return reject(job, SS_E_ARGUMENT, "segment %u: %llu bytes is not a whole number of %u-byte elements", i,
                      (unsigned long long)seg->nbytes, job->itemsize);
    }
    const ss_file *f = b->files[seg->file];
    uint64_t end;
    if (!ss_add_u64(seg->offset, last, &end) || end > f->size)
        return reject(job, SS_E_RANGE, "bytes %llu..%llu lie outside the %llu-byte file", (unsigned long long)seg->offset,
                      (unsigned long long)(end < seg->offset ? UINT64_MAX : end), (unsigned long long)f->size);
    return SS_OK;
}

/* Checks every field of a job against the batch before anything is touched; computes its
 * size. A bad job gets its status and message here and is never run. */
static ss_status check_job(const batch *b, ss_job *job, uint64_t *size) {
    *size = 0;
    ss_status status = check_job_fields(job);
    if (status) return status;
    ss_segment one;
    uint32_t count;
    const ss_segment *segs = job_segments(job, &one, &count);
    for (uint32_t i = 0; i < count; i++) {
        uint64_t bytes = 0;
        status = check_segment(b, job, i, &segs[i], &bytes);
        if (status) return status;
        if (!ss_add_u64(*size, bytes, size)) return reject(job, SS_E_ARGUMENT, "job length overflows 64 bits");
    }
    uint32_t width = ss_value_width(job->value_kind);
    if (width > 1 && *size % width)
        return reject(job, SS_E_ARGUMENT, "%llu bytes is not a whole number of %u-byte %s values",
                      (unsigned long long)*size, width, ss_value_kind_name(job->value_kind));
    return SS_OK;
}

static void hash_job(const batch *b, ss_job *job, stream *st, volatile uint32_t *current_file) {
    uint32_t swap = (job->flags & SS_JOB_BYTESWAP) ? job->itemsize : 1;
    ss_segment one;
    uint32_t count;
    const ss_segment *segs = job_segments(job, &one, &count);
    for (uint32_t i = 0; i < count; i++) {
        const ss_segment *seg = &segs[i];
        const ss_file *f = b->files[seg->file];
        *current_file = seg->file;
        if (!f->data) continue; /* empty file: check_job allowed only empty ranges */
        const uint8_t *base = f->data + seg->offset;
        int empty = 0;
        for (uint32_t d = 0; d < seg->ndim; d++) empty |= seg->shape[d] == 0;
        if (empty) continue;
        if (seg->ndim) {
            stream_strided(st, base, seg, job->itemsize, swap);
            /* A strided walk revisits its whole extent (a transpose reads column by column), so
             * its pages are released once, when it ends. Neither product can overflow:
             * check_job multiplied both out. */
            uint64_t bytes = job->itemsize, extent = job->itemsize;
            for (uint32_t d = 0; d < seg->ndim; d++) {
                bytes *= (uint64_t)seg->shape[d];
                extent += (uint64_t)(seg->shape[d] - 1) * (uint64_t)seg->strides[d];
            }
            release_pages(b, base, (size_t)extent);
            if (b->progress) __atomic_fetch_add(b->progress, bytes, __ATOMIC_RELAXED);
        } else {
            flush_gather(st); /* strided bytes gathered so far come first */
            stream_contiguous(b, st, base, seg->nbytes, swap);
        }
    }
    flush_gather(st);
}

/* sigsetjmp's frame: only `job`, `files` and the volatile file index are used after a jump. */
static void run_job(const batch *b, ss_job *job, uint8_t *gather) {
    volatile uint32_t current_file = 0;
    stream st;
    memset(&st, 0, sizeof st);
    XXH3_INITSTATE(&st.state);
    XXH3_128bits_reset(&st.state);
    st.with_crc = (job->flags & SS_JOB_CRC32) != 0;
    st.crc = 0; /* crc32_gzip_refl's initial value, as zip's */
    st.gather = gather;
    ss_values_start(&st.values, job->value_kind);
    sigjmp_buf jump;
    if (sigsetjmp(jump, 0)) {
        ss_guard_jump = NULL;
        job->status = SS_E_CHANGED;
        job->failed_file = current_file;
        snprintf(job->message, sizeof job->message, "file shrank while being read");
        return;
    }
    ss_guard_jump = &jump;
    hash_job(b, job, &st, &current_file);
    ss_guard_jump = NULL;
    XXH128_canonical_t canonical;
    XXH128_canonicalFromHash(&canonical, XXH3_128bits_digest(&st.state));
    memcpy(job->digest, canonical.digest, 16);
    job->crc32 = st.crc;
    job->nan_count = st.values.nan;
    job->inf_count = st.values.inf;
    job->all_zero = !st.values.nonzero;
    job->status = SS_OK;
}

/* Asks for the first window of a job's first run to be read in. Within a run each window asks
 * for the next, but a job's first window would otherwise be read only when the job starts, a
 * stall per tensor on a cold cache. Small jobs are left to the kernel's readahead: the call
 * would cost more than it saves. */
#define PREFETCH_MIN (1u << 20)
static void prefetch_start(const batch *b, const ss_job *job) {
    ss_segment one;
    uint32_t count;
    const ss_segment *seg = job_segments(job, &one, &count);
    if (seg->ndim || seg->nbytes < PREFETCH_MIN) return;
    ss_file_prefetch(b->files[seg->file], seg->offset, seg->nbytes < b->window ? seg->nbytes : b->window);
}

/* Each worker, as it takes a job, asks for the first window of the job the next worker to be
 * free will take: that job is then on its way in while the jobs before it are hashed. Only
 * asked for, not taken, so every worker still takes the next job in order when it is free. */
static void *worker(void *arg) {
    batch *b = arg;
    uint8_t *gather = malloc(GATHER);
    for (;;) {
        uint32_t at = __atomic_fetch_add(&b->next, 1, __ATOMIC_RELAXED);
        if (at >= b->nrun) break;
        uint32_t ahead = __atomic_load_n(&b->next, __ATOMIC_RELAXED);
        if (ahead < b->nrun) prefetch_start(b, &b->jobs[b->order[ahead]]);
        ss_job *job = &b->jobs[b->order[at]];
        if (!gather) {
            job->status = SS_E_NOMEM;
            snprintf(job->message, sizeof job->message, "out of memory");
            continue;
        }
        run_job(b, job, gather);
    }
    free(gather);
    return NULL;
}

typedef struct {
    uint64_t size;
    uint32_t index;
} sized;

static int largest_first(const void *a, const void *b) {
    const sized *x = a, *y = b;
    if (x->size != y->size) return x->size > y->size ? -1 : 1;
    return (x->index > y->index) - (x->index < y->index);
}

ss_status ss_hash_batch(ss_file *const *files, uint32_t nfiles, ss_job *jobs, uint32_t njobs, uint32_t threads,
                        uint64_t *progress) {
    if ((njobs && !jobs) || (nfiles && !files)) return SS_E_ARGUMENT;
    if (njobs == 0) return SS_OK;
    ss_guard_install();
    batch b = {.files = files, .nfiles = nfiles, .jobs = jobs, .page = (size_t)sysconf(_SC_PAGESIZE),
               .progress = progress};
    sized *sizes = malloc(njobs * sizeof *sizes);
    b.order = malloc(njobs * sizeof *b.order);
    if (!sizes || !b.order) {
        free(sizes);
        free(b.order);
        return SS_E_NOMEM;
    }
    for (uint32_t i = 0; i < njobs; i++) {
        jobs[i].message[0] = '\0';
        uint32_t first = jobs[i].nsegments && jobs[i].segments ? jobs[i].segments[0].file : jobs[i].file;
        jobs[i].failed_file = first < nfiles ? first : 0; /* always a valid index for the caller */
        jobs[i].status = check_job(&b, &jobs[i], &sizes[i].size);
        if (jobs[i].status && !jobs[i].message[0])
            snprintf(jobs[i].message, sizeof jobs[i].message, "%s", ss_strerror(jobs[i].status));
        sizes[i].index = i;
    }
    qsort(sizes, njobs, sizeof *sizes, largest_first);
    /* A job check_job rejected is never run, nor looked at by a worker (another's prefetch). */
    for (uint32_t i = 0; i < njobs; i++)
        if (jobs[sizes[i].index].status == SS_OK) b.order[b.nrun++] = sizes[i].index;
    free(sizes);

    if (threads == 0) {
        long online = sysconf(_SC_NPROCESSORS_ONLN);
        threads = online > 0 ? (uint32_t)online : 1;
    }
    if (threads > b.nrun) threads = b.nrun ? b.nrun : 1;
#if defined(__x86_64__) || defined(__i386__)
    /* libxxhash picks its SIMD variant lazily on first use; pick it here, before the workers
     * start, so they never race to fill its dispatch table. */
    (void)XXH3_128bits_dispatch(NULL, 0);
#endif
    if (threads > 256) threads = 256;
    /* Start with nothing mapped: reading the headers left pages of every file mapped (one
     * byte read maps its whole folio, up to 2 MiB), and they would add to the windows. */
    for (uint32_t i = 0; i < nfiles; i++)
        if (files[i] && files[i]->data) ss_release_pages(files[i]->data, (size_t)files[i]->size, b.page);
    b.window = MAPPED_BUDGET / threads < WINDOW_MAX ? MAPPED_BUDGET / threads : WINDOW_MAX;
    b.window -= b.window % b.page;
    pthread_t tids[256];
    uint32_t started = 0;
    /* Thread 0 is the caller; failing to start more threads only costs speed. */
    for (uint32_t t = 1; t < threads; t++) {
        if (pthread_create(&tids[started], NULL, worker, &b) != 0) break;
        started++;
    }
    worker(&b);
    for (uint32_t t = 0; t < started; t++) pthread_join(tids[t], NULL);
    free(b.order);
    return SS_OK;
}

void ss_hex_digests(const ss_job *jobs, uint32_t njobs, char *out) {
    static const char hex[] = "0123456789abcdef";
    for (uint32_t i = 0; i < njobs; i++)
        for (int k = 0; k < 16; k++) {
            *out++ = hex[jobs[i].digest[k] >> 4];
            *out++ = hex[jobs[i].digest[k] & 15];
        }
}
