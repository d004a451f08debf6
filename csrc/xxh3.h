/* XXH3-128 for the hashing engine and the file digests, through libxxhash's runtime-dispatch
 * entry points on x86 (SSE2, AVX2 or AVX-512, picked once at start). */
#ifndef SHARDSCAN_XXH3_H
#define SHARDSCAN_XXH3_H

#define XXH_STATIC_LINKING_ONLY
#include <xxhash.h>
#if defined(__x86_64__) || defined(__i386__)
#include <xxh_x86dispatch.h>
#define hash_update XXH3_128bits_update_dispatch
#else
#define hash_update XXH3_128bits_update
#endif

#endif
