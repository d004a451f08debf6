/*
 * readlimit - the machine's read limit for a set of files: N threads read every byte and
 * do the least possible work with it (a vector add per 64-byte line), so the figure is the
 * cost of getting bytes from the page cache (or disk) into registers and nothing else; and,
 * in xxh3 mode, the same pass with XXH3-128 as the work, the limit for hashing those bytes.
 *
 *   readlimit mmap|pread|xxh3 THREADS FILE...
 *
 * Work is split into 64 MiB chunks across all files, handed out through one atomic counter,
 * so both threads stay busy until the end even with shards of unequal size.
 *   mmap:  each chunk is mapped with MAP_POPULATE (one call faults in the whole chunk instead
 *          of a fault per 64 KiB), summed, and unmapped, so resident memory stays one chunk per
 *          thread; this is the path a mmap-based hasher takes.
 *   pread: each thread preads into its own reused 8 MiB buffer; the copy is part of the cost.
 *   xxh3:  mapped as for mmap, then each chunk hashed with libxxhash's XXH3_128bits_dispatch
 *          (SSE2, AVX2 or AVX-512 picked at run time, as shardscan's core does). A chunk is
 *          hashed on its own, so the digests are not any tensor's, but the arithmetic per byte
 *          is the same as hashing whole tensors: the figure is a plain C loop's hashing rate.
 * Prints the byte count and the sum (the sum keeps the compiler from dropping the reads).
 * Built by benches/run.py with `gcc -O2 -pthread ... -lxxhash`.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define XXH_STATIC_LINKING_ONLY
#include <xxhash.h>
#if defined(__x86_64__) || defined(__i386__)
#include <xxh_x86dispatch.h>
#define hash128 XXH3_128bits_dispatch
#else
#define hash128 XXH3_128bits
#endif

#define CHUNK (64u << 20)
#define PREAD_BUF (8u << 20)

/* One 64-byte line as a GCC vector: a single add per line with AVX-512, four with SSE2,
 * either way far cheaper than the memory traffic it stands for. */
typedef uint64_t line_t __attribute__((vector_size(64)));

struct job { int fd; uint64_t off, len; };

static struct job *jobs;
static size_t njobs;
static atomic_size_t next_job;
enum mode { MODE_MMAP, MODE_PREAD, MODE_XXH3 };
static enum mode mode;

static uint64_t sum_bytes(const unsigned char *p, size_t n)
{
    line_t acc = {0};
    size_t i = 0;
    for (; i + 64 <= n; i += 64)
        acc += *(const line_t *)(p + i);
    uint64_t s = 0;
    for (int k = 0; k < 8; k++)
        s += acc[k];
    for (; i < n; i++) /* a file's tail that is not a whole line */
        s += p[i];
    return s;
}

static void *worker(void *arg)
{
    uint64_t *out = arg, s = 0;
    unsigned char *buf = NULL;
    if (mode == MODE_PREAD && posix_memalign((void **)&buf, 4096, PREAD_BUF) != 0) {
        perror("posix_memalign");
        exit(2);
    }
    for (;;) {
        size_t j = atomic_fetch_add(&next_job, 1);
        if (j >= njobs)
            break;
        struct job *jb = &jobs[j];
        if (mode != MODE_PREAD) {
            void *m = mmap(NULL, jb->len, PROT_READ, MAP_SHARED | MAP_POPULATE, jb->fd, (off_t)jb->off);
            if (m == MAP_FAILED) {
                perror("mmap");
                exit(2);
            }
            if (mode == MODE_XXH3) {
                XXH128_hash_t h = hash128(m, jb->len);
                s += h.low64 ^ h.high64;
            } else {
                s += sum_bytes(m, jb->len);
            }
            munmap(m, jb->len);
        } else {
            for (uint64_t done = 0; done < jb->len;) {
                size_t want = jb->len - done < PREAD_BUF ? (size_t)(jb->len - done) : PREAD_BUF;
                ssize_t got = pread(jb->fd, buf, want, (off_t)(jb->off + done));
                if (got <= 0) {
                    perror("pread");
                    exit(2);
                }
                s += sum_bytes(buf, (size_t)got);
                done += (uint64_t)got;
            }
        }
    }
    free(buf);
    *out = s;
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc >= 4 && !strcmp(argv[1], "mmap"))
        mode = MODE_MMAP;
    else if (argc >= 4 && !strcmp(argv[1], "pread"))
        mode = MODE_PREAD;
    else if (argc >= 4 && !strcmp(argv[1], "xxh3"))
        mode = MODE_XXH3;
    else {
        fprintf(stderr, "usage: readlimit mmap|pread|xxh3 THREADS FILE...\n");
        return 2;
    }
    int nthreads = atoi(argv[2]);
    if (nthreads < 1)
        nthreads = 1;
    uint64_t total = 0;
    size_t cap = 0;
    for (int a = 3; a < argc; a++) {
        int fd = open(argv[a], O_RDONLY);
        struct stat st;
        if (fd < 0 || fstat(fd, &st) != 0) {
            perror(argv[a]);
            return 2;
        }
        for (uint64_t off = 0; off < (uint64_t)st.st_size; off += CHUNK) {
            if (njobs == cap) {
                cap = cap ? 2 * cap : 64;
                jobs = realloc(jobs, cap * sizeof *jobs);
                if (!jobs) {
                    perror("realloc");
                    return 2;
                }
            }
            uint64_t len = (uint64_t)st.st_size - off < CHUNK ? (uint64_t)st.st_size - off : CHUNK;
            jobs[njobs++] = (struct job){fd, off, len};
        }
        total += (uint64_t)st.st_size;
    }
    pthread_t *th = calloc((size_t)nthreads, sizeof *th);
    uint64_t *sums = calloc((size_t)nthreads, sizeof *sums);
    for (int t = 0; t < nthreads; t++)
        pthread_create(&th[t], NULL, worker, &sums[t]);
    uint64_t s = 0;
    for (int t = 0; t < nthreads; t++) {
        pthread_join(th[t], NULL);
        s += sums[t];
    }
    printf("bytes=%llu sum=%016llx\n", (unsigned long long)total, (unsigned long long)s);
    return 0;
}
