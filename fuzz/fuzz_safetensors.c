/* libFuzzer target: the safetensors header parser on arbitrary bytes held as a mapped file. */
#define _GNU_SOURCE /* internal.h needs sigjmp_buf, which strict C11 hides */
#include <stdlib.h>

#include "internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    ss_file file = {.data = size ? data : NULL, .size = size};
    ss_st_listing listing;
    ss_error err;
    ss_status s = ss_st_parse(&file, &listing, &err);
    /* A listing the parser accepts must only point inside the file it claims to cover. */
    if (s == SS_OK) {
        for (uint32_t i = 0; i < listing.count; i++)
            if (listing.offsets[i] + listing.nbytes[i] > size || listing.shape_of[i] >= listing.shape_count) abort();
        /* Distinct shapes lie in order inside dims. */
        for (uint32_t j = 0; j < listing.shape_count; j++)
            if (listing.shape_offsets[j] > listing.shape_offsets[j + 1]) abort();
    }
    ss_st_listing_free(&listing);
    return 0;
}
