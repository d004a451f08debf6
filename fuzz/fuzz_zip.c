/* libFuzzer target: the zip directory reader and the local-header walk used on cut files. */
#define _GNU_SOURCE /* internal.h needs sigjmp_buf, which strict C11 hides */
#include <stdlib.h>

#include "internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    ss_file file = {.data = size ? data : NULL, .size = size};
    ss_zip_listing listing;
    ss_error err;
    if (ss_zip_parse(&file, &listing, &err) == SS_OK)
        for (uint32_t i = 0; i < listing.count; i++) /* accepted records lie inside the file */
            if (listing.data_offsets[i] + listing.sizes[i] > size) abort();
    ss_zip_listing_free(&listing);
    ss_zip_walk_local(&file, &listing, &err);
    ss_zip_listing_free(&listing);
    return 0;
}
