/* libFuzzer target: the shard index reader on arbitrary bytes. */
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
    }
    ss_index_listing_free(&listing);
    return 0;
}
