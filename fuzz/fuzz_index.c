/* libFuzzer target: the shard index reader on arbitrary bytes; the block split of its keys and
 * the search for a repeated one. */
#define _GNU_SOURCE /* internal.h needs sigjmp_buf, which strict C11 hides */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    ss_index_listing listing;
    ss_error err;
    if (ss_index_parse((const char *)data, size, &listing, &err) == SS_OK) {
        /* Every key names a shard that exists; offsets only grow, within their text. */
        for (uint32_t i = 0; i < listing.count; i++)
            if (listing.shard_of[i] >= listing.shard_count || listing.key_offsets[i] > listing.key_offsets[i + 1]) abort();
        for (uint32_t i = 0; i < listing.shard_count; i++)
            if (listing.shard_offsets[i] > listing.shard_offsets[i + 1]) abort();
        /* Shard names are distinct. */
        for (uint32_t i = 0; i + 1 < listing.shard_count && i < 64; i++) {
            uint32_t a = listing.shard_offsets[i + 1] - listing.shard_offsets[i];
            uint32_t b = listing.shard_offsets[i + 2] - listing.shard_offsets[i + 1];
            if (a == b && memcmp(listing.shards + listing.shard_offsets[i], listing.shards + listing.shard_offsets[i + 1], a) == 0) abort();
        }
        /* Measured against its own keys, every key is found in its own shard. */
        uint32_t n = listing.count;
        uint8_t *state = malloc(n + 1), *listed = malloc(n + 1);
        uint32_t *found = malloc((n + 1) * sizeof *found);
        if (!state || !listed || !found) abort();
        size_t names_len = n ? listing.key_offsets[n] - 1 : 0;
        ss_status s = ss_index_compare(&listing, n ? listing.keys : "", names_len, n, listing.shard_of, state, found, listed, &err);
        if (s == SS_OK) {
            for (uint32_t i = 0; i < n; i++)
                if (state[i] != 1 || !listed[i] || found[i] != listing.shard_of[i]) abort();
        } else if (s != SS_E_ARGUMENT || !memchr(listing.keys, 0, names_len)) {
            abort(); /* refused only when a key holds a NUL, which the separator cannot carry */
        }
        free(state), free(listed), free(found);
        /* The keys are distinct; given twice over, the first repeat is the first key's second
         * copy. Only a key holding a NUL, which reads as two names, is refused. */
        size_t text_len = n ? listing.key_offsets[n] : 0;
        char *twice = malloc(2 * text_len + 1);
        if (!twice) abort();
        if (text_len) memcpy(twice, listing.keys, text_len), memcpy(twice + text_len, listing.keys, text_len);
        uint32_t once = 0, again = 0;
        ss_status s1 = ss_first_repeat(twice, text_len, n, &once, &err);
        ss_status s2 = ss_first_repeat(twice, 2 * text_len, 2 * n, &again, &err);
        int holds_nul = 0;
        for (uint32_t i = 0; i < n; i++)
            holds_nul |= memchr(listing.keys + listing.key_offsets[i], 0, listing.key_offsets[i + 1] - listing.key_offsets[i] - 1) != NULL;
        if (s1 != s2 || (s1 == SS_OK ? holds_nul || once != n || again != n : s1 != SS_E_ARGUMENT || !holds_nul)) abort();
        free(twice);
        /* Split into blocks, every key is its head, a dot and its suffix, or in no block; the
         * runs of heads cover the keys in order, each run's head differing from the last's. */
        ss_block_listing blocks;
        s = ss_block_split(n ? listing.keys : "", n ? listing.key_offsets[n] : 0, n, "layers\0h\0blocks\0\0", &blocks, &err);
        if (s == SS_OK) {
            uint32_t run = 0;
            for (uint32_t i = 0; i < n; i++) {
                while (run < blocks.run_count && blocks.run_end[run] <= i) run++;
                if (run == blocks.run_count || (run && blocks.run_head[run] == blocks.run_head[run - 1])) abort();
                const char *key = listing.keys + listing.key_offsets[i];
                size_t len = listing.key_offsets[i + 1] - listing.key_offsets[i] - 1;
                uint32_t h = blocks.run_head[run], x = blocks.suffix_of[i];
                if (h >= blocks.head_count || x >= blocks.suffix_count) abort();
                size_t hl = blocks.head_offsets[h + 1] - blocks.head_offsets[h] - 1;
                size_t xl = blocks.suffix_offsets[x + 1] - blocks.suffix_offsets[x] - 1;
                const char *head = blocks.heads + blocks.head_offsets[h], *suffix = blocks.suffixes + blocks.suffix_offsets[x];
                if (hl == 0 ? xl != 0 : (hl + 1 + xl != len || memcmp(key, head, hl) || key[hl] != '.' || memcmp(key + hl + 1, suffix, xl)))
                    abort();
            }
            if (n ? blocks.run_end[blocks.run_count - 1] != n : blocks.run_count != 0) abort();
        } else if (s != SS_E_ARGUMENT || !holds_nul) {
            abort(); /* refused only when a key holds a NUL */
        }
        ss_block_listing_free(&blocks);
    }
    ss_index_listing_free(&listing);
    return 0;
}
