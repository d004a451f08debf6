/* Files: open + fstat + read-only mapping, the SIGBUS guard, errors and messages. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

const char *ss_strerror(ss_status status) {
    switch (status) {
#define SS_MESSAGE_CASE(name, number, message) \
    case name:                                 \
        return message;
        SS_STATUS_LIST(SS_MESSAGE_CASE)
#undef SS_MESSAGE_CASE
    }
    return "unknown status";
}

ss_status ss_fail(ss_error *err, ss_status status, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof err->message, fmt, ap);
        va_end(ap);
        err->status = status;
    }
    return status;
}

void ss_quote_name(char *out, size_t cap, const char *name, size_t len) {
    /* Names come from hostile files: keep messages one printable line of bounded length. */
    size_t o = 0, limit = cap > 8 ? cap - 8 : 0;
    for (size_t i = 0; i < len && o < limit; i++) {
        unsigned char c = (unsigned char)name[i];
        if (c >= 0x20 && c != 0x7f && c != '\\') {
            out[o++] = (char)c;
        } else {
            o += (size_t)snprintf(out + o, cap - o, "\\x%02x", c);
        }
    }
    if (len && o >= limit) {
        memcpy(out + (o < cap - 4 ? o : cap - 4), "...", 4);
        return;
    }
    out[o < cap ? o : cap - 1] = '\0';
}

int ss_utf8_valid(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        uint64_t word;
        if (n - i >= 8 && (memcpy(&word, s + i, 8), !(word & 0x8080808080808080ull))) { /* ASCII: 8 at a time */
            i += 8;
            continue;
        }
        unsigned char c = s[i];
        if (c < 0x80) { i++; continue; }
        size_t len;
        uint32_t cp;
        if (c >= 0xC2 && c <= 0xDF) len = 2, cp = c & 0x1F;
        else if (c >= 0xE0 && c <= 0xEF) len = 3, cp = c & 0x0F;
        else if (c >= 0xF0 && c <= 0xF4) len = 4, cp = c & 0x07;
        else return 0;
        if (n - i < len) return 0;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return 0;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if ((len == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)))
            return 0;
        i += len;
    }
    return 1;
}

/* ---- SIGBUS guard ------------------------------------------------------------------------ */

__thread sigjmp_buf *ss_guard_jump;
static __thread int chaining; /* set while a fault that is not ours is passed on */
static struct sigaction previous_sigbus;
static pthread_mutex_t install_lock = PTHREAD_MUTEX_INITIALIZER;

static void on_sigbus(int sig, siginfo_t *info, void *context) {
    sigjmp_buf *target = ss_guard_jump;
    if (target) {
        ss_guard_jump = NULL;
        siglongjmp(*target, 1);
    }
    /* Not inside one of our guarded loops: pass it on to whoever had SIGBUS before us. If
     * that handler chains back to us (each saved the other), fall through to the default. */
    if (!chaining) {
        chaining = 1;
        if (previous_sigbus.sa_flags & SA_SIGINFO) {
            if (previous_sigbus.sa_sigaction) previous_sigbus.sa_sigaction(sig, info, context);
        } else if (previous_sigbus.sa_handler != SIG_DFL && previous_sigbus.sa_handler != SIG_IGN) {
            previous_sigbus.sa_handler(sig);
        }
        chaining = 0;
    }
    signal(sig, SIG_DFL);
    raise(sig);
}

static int guard_is_ours(void) {
    struct sigaction current;
    return sigaction(SIGBUS, NULL, &current) == 0 && (current.sa_flags & SA_SIGINFO) && current.sa_sigaction == on_sigbus;
}

/* Called before every guarded access: other libraries in the process (Ray, faulthandler, a
 * JVM) may install their own SIGBUS handler after us, so re-arm ours, chaining to theirs. */
void ss_guard_install(void) {
    if (guard_is_ours()) return;
    pthread_mutex_lock(&install_lock);
    if (!guard_is_ours()) {
        struct sigaction action, replaced;
        memset(&action, 0, sizeof action);
        action.sa_sigaction = on_sigbus;
        /* SA_NODEFER: we leave the handler by siglongjmp without restoring the mask, so
         * SIGBUS must not stay blocked on this thread afterwards. */
        action.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK;
        sigemptyset(&action.sa_mask);
        if (sigaction(SIGBUS, &action, &replaced) == 0) previous_sigbus = replaced;
    }
    pthread_mutex_unlock(&install_lock);
}

/* ---- files --------------------------------------------------------------------------------- */

/* Why `path` did not open. A link whose target is gone is named as such: "No such file"
 * would send the user looking for a file that is right there in the listing (a hub snapshot
 * moved or copied without its blobs leaves exactly this). */
static ss_status open_failure(const char *path, int error, ss_error *err) {
    char target[512];
    struct stat st;
    if (error == ENOENT && lstat(path, &st) == 0 && S_ISLNK(st.st_mode)) {
        ssize_t n = readlink(path, target, sizeof target - 1);
        if (n >= 0) {
            target[n] = '\0';
            return ss_fail(err, SS_E_IO, "a symbolic link to %s, which does not exist", target);
        }
    }
    return ss_fail(err, SS_E_IO, "cannot open: %s", strerror(error));
}

ss_status ss_file_open(const char *path, ss_file **out, ss_error *err) {
    *out = NULL;
    ss_guard_install();
    /* O_NONBLOCK: opening a FIFO must never wait for a writer; we refuse it right after. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0) return open_failure(path, errno, err);
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return ss_fail(err, SS_E_IO, "cannot stat: %s", strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return ss_fail(err, SS_E_NOT_REGULAR, "%s", S_ISDIR(st.st_mode) ? "is a directory" : "not a regular file");
    }
    ss_file *file = calloc(1, sizeof *file);
    if (!file) {
        close(fd);
        return ss_fail(err, SS_E_NOMEM, "out of memory");
    }
    file->size = (uint64_t)st.st_size;
    if (file->size > 0) {
        void *map = mmap(NULL, (size_t)file->size, PROT_READ, MAP_SHARED, fd, 0);
        if (map == MAP_FAILED) {
            int e = errno;
            close(fd);
            free(file);
            return ss_fail(err, SS_E_IO, "cannot map: %s", strerror(e));
        }
        /* Tensors are read front to back: ask the kernel for aggressive readahead. */
        madvise(map, (size_t)file->size, MADV_SEQUENTIAL);
        file->data = map;
    }
    close(fd);
    *out = file;
    return SS_OK;
}

void ss_file_close(ss_file *file) {
    if (!file) return;
    if (file->data) munmap((void *)file->data, (size_t)file->size);
    free(file);
}

uint64_t ss_file_size(const ss_file *file) { return file->size; }

/* The copy lives in its own frame so nothing that changes is live across sigsetjmp. */
static ss_status guarded_copy(void *dst, const uint8_t *src, uint64_t len) {
    sigjmp_buf jump;
    if (sigsetjmp(jump, 0)) return SS_E_CHANGED;
    ss_guard_jump = &jump;
    memcpy(dst, src, (size_t)len);
    ss_guard_jump = NULL;
    return SS_OK;
}

void ss_file_prefetch(const ss_file *file, uint64_t offset, uint64_t len) {
    if (offset >= file->size) return;
    if (len > file->size - offset) len = file->size - offset;
    uintptr_t page_mask = (uintptr_t)sysconf(_SC_PAGESIZE) - 1;
    uintptr_t start = (uintptr_t)(file->data + offset) & ~page_mask;
    madvise((void *)start, (uintptr_t)(file->data + offset + len) - start, MADV_WILLNEED);
}

ss_status ss_file_read(const ss_file *file, uint64_t offset, void *dst, uint64_t len, ss_error *err) {
    ss_guard_install();
    uint64_t end;
    if (!ss_add_u64(offset, len, &end) || end > file->size)
        return ss_fail(err, SS_E_RANGE, "range %llu+%llu outside a %llu-byte file",
                       (unsigned long long)offset, (unsigned long long)len, (unsigned long long)file->size);
    if (len == 0) return SS_OK;
    if (guarded_copy(dst, file->data + offset, len) != SS_OK)
        return ss_fail(err, SS_E_CHANGED, "file shrank while being read");
    return SS_OK;
}
