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
    }
    ss_index_listing_free(&listing);
    return 0;
}
