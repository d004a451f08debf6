/* Sets of names held as spans of one text, for the translation units that number or
 * deduplicate names (safetensors.c, blocks.c). Header-only: the probe is inlined into their
 * per-name loops. */
#ifndef SHARDSCAN_NAME_SET_H
#define SHARDSCAN_NAME_SET_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "xxh3.h"

typedef struct {
    uint32_t start, len;
} span;

/* An open-addressing set of names held as spans of one text. A slot holds the span's index
 * + 1 in its low half (0: empty) and the top half of the name's hash in its high half, so
 * that a probe compares bytes only when the hashes agree. */
typedef struct {
    uint64_t *slots;
    size_t size; /* a power of two, or 0 */
} name_set;

/* The slot of `name`, or the empty slot where it would go; *tag receives the high half of
 * the name's hash, for name_put. */
static inline uint64_t *name_slot(const name_set *set, const char *text, const span *spans, const char *name, uint32_t len,
                           uint64_t *tag) {
    uint64_t hash = XXH3_64bits(name, len);
    *tag = hash >> 32 << 32;
    for (size_t at = (size_t)hash & (set->size - 1);; at = (at + 1) & (set->size - 1)) {
        uint64_t slot = set->slots[at];
        if (!slot) return &set->slots[at];
        const span *other = &spans[(uint32_t)slot - 1];
        if ((slot & ~0xFFFFFFFFull) == *tag && other->len == len && memcmp(text + other->start, name, len) == 0)
            return &set->slots[at];
    }
}

/* Puts name number `i` in the empty slot name_slot found for it. */
static inline void name_put(uint64_t *slot, uint64_t tag, uint32_t i) { *slot = tag | (i + 1); }

/* The number of the name a non-empty slot holds. */
static inline uint32_t name_index(uint64_t slot) { return (uint32_t)slot - 1; }

/* Empty, with room for `capacity` names. */
static inline int name_set_init(name_set *set, size_t capacity) {
    size_t size = 64;
    while (size < 2 * capacity) size *= 2;
    set->slots = calloc(size, sizeof *set->slots);
    set->size = set->slots ? size : 0;
    return set->slots != NULL;
}

/* Room for one more name beside the `count` held: rebuilt twice as large past half full. */
static inline int name_set_reserve(name_set *set, size_t count, const char *text, const span *spans) {
    if (2 * (count + 1) <= set->size) return 1;
    name_set grown;
    if (!name_set_init(&grown, 2 * (count + 1))) return 0;
    for (uint32_t i = 0; i < count; i++) {
        uint64_t tag;
        uint64_t *slot = name_slot(&grown, text, spans, text + spans[i].start, spans[i].len, &tag);
        name_put(slot, tag, i);
    }
    free(set->slots);
    *set = grown;
    return 1;
}

#endif
