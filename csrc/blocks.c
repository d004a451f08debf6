/* A checkpoint's tensor names measured as one list (an MoE model has about 100k of them).
 *
 * The repeated blocks of a model: "model.layers.3.mlp.w" lies in block "model.layers.3" with
 * the suffix "mlp.w". Every name is split before its layout is built, and blocks repeat the
 * same few thousand suffixes: the split runs here, and each distinct part is handed over once.
 *
 * Names given twice: a key that two shards hold is found here, without a Python object per
 * name. */
#define _GNU_SOURCE /* internal.h needs POSIX's sigjmp_buf, which strict -std=c11 hides */
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "name_set.h"

/* Whether name[0..len) is one of `containers` (each NUL-terminated, an empty name last). */
static int is_container(const char *containers, const char *name, size_t len) {
    for (const char *c = containers; *c; c += strlen(c) + 1)
        if (*c == *name && strlen(c) == len && memcmp(c, name, len) == 0) return 1;
    return 0;
}

/* Where the block of name[0..len) ends (the dot after its number), or NULL for a name in no
 * block: the first component that is a container, followed by a component of ASCII digits
 * and a dot. */
static const char *block_end(const char *name, size_t len, const char *containers) {
    const char *end = name + len;
    for (const char *part = name; part < end;) {
        const char *dot = memchr(part, '.', (size_t)(end - part));
        if (!dot) return NULL;
        if (is_container(containers, part, (size_t)(dot - part))) {
            const char *digit = dot + 1;
            while (digit < end && *digit >= '0' && *digit <= '9') digit++;
            if (digit > dot + 1 && digit < end && *digit == '.') return digit;
        }
        part = dot + 1;
    }
    return NULL;
}

/* The distinct parts met so far: spans of the names' text, numbered in order of appearance. */
typedef struct {
    name_set set;
    span *spans;
    uint32_t count;
} parts;

/* The number of text[start, start + len), numbered anew if unseen; UINT32_MAX out of memory. */
static uint32_t part_number(parts *p, const char *text, uint32_t start, uint32_t len) {
    if (!name_set_reserve(&p->set, p->count, text, p->spans)) return UINT32_MAX;
    uint64_t tag;
    uint64_t *slot = name_slot(&p->set, text, p->spans, text + start, len, &tag);
    if (!*slot) {
        p->spans[p->count] = (span){start, len};
        name_put(slot, tag, p->count++);
    }
    return name_index(*slot);
}

/* The distinct parts laid end to end, each followed by a NUL, and their offsets. */
static int gather(const parts *p, const char *text, char **out, uint32_t **offsets) {
    size_t bytes = 0;
    for (uint32_t i = 0; i < p->count; i++) bytes += p->spans[i].len + 1;
    *out = malloc(bytes + 1);
    *offsets = malloc(((size_t)p->count + 1) * sizeof **offsets);
    if (!*out || !*offsets) return 0;
    uint32_t at = 0;
    for (uint32_t i = 0; i < p->count; i++) {
        (*offsets)[i] = at;
        memcpy(*out + at, text + p->spans[i].start, p->spans[i].len);
        at += p->spans[i].len;
        (*out)[at++] = '\0';
    }
    (*offsets)[p->count] = at;
    return 1;
}

ss_status ss_block_split(const char *names, size_t names_len, uint32_t count, const char *containers,
                         ss_block_listing *out, ss_error *err) {
    memset(out, 0, sizeof *out);
    if (names_len > UINT32_MAX) return ss_fail(err, SS_E_ARGUMENT, "names of more than 4 GiB");
    if (count > names_len) /* each name ends in a NUL: no more names than bytes */
        return ss_fail(err, SS_E_ARGUMENT, "names are not %u NUL-terminated names", count);
    parts heads = {0}, suffixes = {0};
    out->suffix_of = malloc(((size_t)count + 1) * sizeof *out->suffix_of);
    out->run_head = malloc(((size_t)count + 1) * sizeof *out->run_head);
    out->run_end = malloc(((size_t)count + 1) * sizeof *out->run_end);
    heads.spans = malloc(((size_t)count + 1) * sizeof *heads.spans);
    suffixes.spans = malloc(((size_t)count + 1) * sizeof *suffixes.spans);
    ss_status s = SS_OK;
    if (!out->suffix_of || !out->run_head || !out->run_end || !heads.spans || !suffixes.spans) s = SS_E_NOMEM;
    uint32_t i = 0, runs = 0;
    span head = {0, 0}; /* the current run's head */
    for (const char *name = names, *stop = names + names_len; !s && name < stop; i++) {
        const char *nul = memchr(name, '\0', (size_t)(stop - name));
        if (!nul || i == count) {
            s = ss_fail(err, SS_E_ARGUMENT, "names are not %u NUL-terminated names", count);
            break;
        }
        const char *split = block_end(name, (size_t)(nul - name), containers);
        uint32_t at = (uint32_t)(name - names), head_len = split ? (uint32_t)(split - name) : 0;
        uint32_t suffix_start = split ? (uint32_t)(split + 1 - names) : at;
        /* Names come block by block: the previous name's head is tried before the set. */
        if (!runs || head_len != head.len || memcmp(names + at, names + head.start, head_len) != 0) {
            uint32_t number = part_number(&heads, names, at, head_len);
            if (number == UINT32_MAX) s = SS_E_NOMEM;
            if (runs) out->run_end[runs - 1] = i;
            out->run_head[runs++] = number;
            head = (span){at, head_len};
        }
        out->suffix_of[i] = part_number(&suffixes, names, suffix_start, split ? (uint32_t)(nul - split - 1) : 0);
        if (out->suffix_of[i] == UINT32_MAX) s = SS_E_NOMEM;
        name = nul + 1;
    }
    if (runs) out->run_end[runs - 1] = i;
    if (!s && i != count) s = ss_fail(err, SS_E_ARGUMENT, "names are not %u NUL-terminated names", count);
    if (!s && (!gather(&heads, names, &out->heads, &out->head_offsets) ||
               !gather(&suffixes, names, &out->suffixes, &out->suffix_offsets)))
        s = SS_E_NOMEM;
    out->count = count;
    out->run_count = runs;
    out->head_count = heads.count;
    out->suffix_count = suffixes.count;
    free(heads.set.slots), free(heads.spans), free(suffixes.set.slots), free(suffixes.spans);
    if (s == SS_E_NOMEM) ss_fail(err, s, "out of memory");
    if (s) ss_block_listing_free(out);
    return s;
}

void ss_block_listing_free(ss_block_listing *listing) {
    free(listing->suffix_of), free(listing->run_head), free(listing->run_end);
    free(listing->head_offsets), free(listing->suffix_offsets);
    free(listing->heads), free(listing->suffixes);
    memset(listing, 0, sizeof *listing);
}

ss_status ss_first_repeat(const char *names, size_t names_len, uint32_t count, uint32_t *first, ss_error *err) {
    *first = count;
    if (names_len > UINT32_MAX) return ss_fail(err, SS_E_ARGUMENT, "names of more than 4 GiB");
    if (count > names_len) /* each name ends in a NUL: no more names than bytes */
        return ss_fail(err, SS_E_ARGUMENT, "names are not %u NUL-terminated names", count);
    span *spans = malloc(((size_t)count + 1) * sizeof *spans);
    name_set set = {0};
    if (!spans || !name_set_init(&set, count)) {
        free(spans);
        return ss_fail(err, SS_E_NOMEM, "out of memory");
    }
    /* Every name is walked, past a repeat too: a name holding a NUL, which would read as two,
     * shows only in the count. */
    const char *name = names, *stop = names + names_len;
    uint32_t i = 0, repeat = count;
    for (; name < stop && i < count; i++) {
        const char *nul = memchr(name, '\0', (size_t)(stop - name));
        if (!nul) break;
        spans[i] = (span){(uint32_t)(name - names), (uint32_t)(nul - name)};
        if (repeat == count) {
            uint64_t tag;
            uint64_t *slot = name_slot(&set, names, spans, name, spans[i].len, &tag);
            if (*slot) repeat = i;
            else name_put(slot, tag, i);
        }
        name = nul + 1;
    }
    ss_status s = SS_OK;
    if (i != count || name != stop) s = ss_fail(err, SS_E_ARGUMENT, "names are not %u NUL-terminated names", count);
    else *first = repeat;
    free(spans);
    free(set.slots);
    return s;
}
