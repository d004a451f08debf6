/*
 * shardscan.h - the C core of shardscan: map checkpoint files read-only, validate their
 * on-disk structure, hash tensors with XXH3-128 on many threads.
 *
 * Conventions
 *  - Every public function is prefixed ss_, returns an ss_status (0 = SS_OK) and writes its
 *    results through out-parameters. Functions that can fail also take an ss_error* that
 *    receives a one-line message naming the file (and the tensor, where there is one).
 *  - No global state except one process-wide SIGBUS handler, installed once, that turns a
 *    fault on one of our mappings into an error for that file (see ss_file_open).
 *  - Nothing here calls into Python; the Python layer releases the GIL around every call.
 */
#ifndef SHARDSCAN_H
#define SHARDSCAN_H

#include <stddef.h>
#include <stdint.h>

/* Each status once: X(name, number, message). Numbers are stable; never reuse one. */
#define SS_STATUS_LIST(X)                                                                     \
    X(SS_OK, 0, "ok")                                                                         \
    X(SS_E_NOMEM, 1, "out of memory")                                                         \
    X(SS_E_IO, 2, "I/O error")                                                                \
    X(SS_E_NOT_REGULAR, 3, "not a regular file")                                              \
    X(SS_E_CHANGED, 4, "file shrank or changed while being read")                             \
    X(SS_E_RANGE, 5, "byte range lies outside the file")                                      \
    X(SS_E_ARGUMENT, 6, "invalid argument")                                                   \
    X(SS_E_ST_TOO_SMALL, 20, "file too small to hold a safetensors header")                  \
    X(SS_E_ST_HEADER_TOO_LARGE, 21, "header length exceeds the 100000000-byte limit")        \
    X(SS_E_ST_HEADER_PAST_EOF, 22, "header length runs past the end of the file")            \
    X(SS_E_ST_UTF8, 23, "header is not valid UTF-8")                                         \
    X(SS_E_ST_JSON, 24, "header is not valid JSON")                                          \
    X(SS_E_ST_NOT_OBJECT, 25, "header is not a JSON object")                                 \
    X(SS_E_ST_METADATA, 26, "__metadata__ is not an object of strings")                      \
    X(SS_E_ST_TENSOR_ENTRY, 27, "tensor entry must have dtype, shape and data_offsets")      \
    X(SS_E_ST_DTYPE, 28, "unknown dtype")                                                     \
    X(SS_E_ST_SHAPE, 29, "shape is not a list of non-negative integers")                     \
    X(SS_E_ST_NUMEL_OVERFLOW, 30, "number of elements overflows 64 bits")                    \
    X(SS_E_ST_OFFSETS, 31, "data_offsets is not [begin, end] with begin <= end")             \
    X(SS_E_ST_NBYTES, 32, "byte length does not match shape and dtype")                      \
    X(SS_E_ST_PARTIAL_BYTE, 33, "tensor does not fill a whole number of bytes")              \
    X(SS_E_ST_GAP, 34, "tensor data does not start where the previous tensor ends")          \
    X(SS_E_ST_TRUNCATED, 35, "file is truncated: tensor data runs past the end")             \
    X(SS_E_ST_TRAILING, 36, "file has trailing bytes after the last tensor")                 \
    X(SS_E_ST_DUPLICATE, 37, "duplicate tensor name")                                         \
    X(SS_E_ST_TOO_DEEP, 38, "header JSON nests too deeply")                                  \
    X(SS_E_INDEX_UNUSUAL, 39, "not a plain shard index: read it with a full JSON reader")     \
    X(SS_E_ZIP_NO_EOCD, 50, "no zip end-of-central-directory record (truncated?)")           \
    X(SS_E_ZIP_CORRUPT, 51, "zip central directory is corrupt")                              \
    X(SS_E_ZIP_COMPRESSED, 52, "zip record is compressed; torch writes stored records")      \
    X(SS_E_ZIP_PREFIX, 53, "zip entries do not share one top-level folder")                  \
    X(SS_E_ZIP_OVERLAP, 54, "zip records overlap")                                            \
    X(SS_E_ZIP_TOO_MANY, 55, "zip has too many entries")                                      \
    X(SS_E_CRC, 56, "CRC32 mismatch: record bytes are corrupt") \
    X(SS_E_ZIP_PAST_EOF, 57, "zip record runs past the end of the file")                  \
    X(SS_E_ZIP_LOCAL_HEADER, 58, "zip local header does not match the central directory")  \
    X(SS_E_ZIP_DUPLICATE, 59, "zip has two entries with the same name")                    \
    X(SS_E_ZIP_ENCRYPTED, 60, "zip record is encrypted")                                    \
    X(SS_E_ZIP_TWO_EOCD, 61, "zip has a second end record: torch may read another archive")  \
    X(SS_E_ZIP_CASE, 62, "zip record names differ only in case: torch may load either")      \
    X(SS_E_ZIP_NAME_UTF8, 63, "zip record name is not valid UTF-8: torch refuses it")        \
    X(SS_E_ZIP_NOT_AT_START, 64, "archive does not start with a zip local header")          \
    X(SS_E_ZIP_DIRECTORY, 65, "zip record is marked as a folder: torch reads none of its bytes")

typedef enum {
#define SS_ENUM_ITEM(name, number, message) name = number,
    SS_STATUS_LIST(SS_ENUM_ITEM)
#undef SS_ENUM_ITEM
} ss_status;

/* Static message for a status ("unknown status" for numbers not in the list). */
const char *ss_strerror(ss_status status);

/* A failure's status plus a one-line message that names the file and, where known, the tensor. */
typedef struct {
    ss_status status;
    char message[512];
} ss_error;

/* ------------------------------------------------------------------------------------------
 * Files. An ss_file is a regular file mapped read-only in full. The descriptor is closed
 * right after mapping, so thousands of shards cost no descriptors; the mapping keeps the
 * inode alive, so a file replaced by rename is still read consistently. A file truncated
 * under us raises SIGBUS on access: ss_file_read and ss_hash_batch catch it (one
 * process-wide handler chained to any previous one, jumping only on threads inside our
 * own guarded copy/hash loops) and report SS_E_CHANGED for that file.
 * Thread safety: an ss_file may be read from any number of threads at once.
 * ------------------------------------------------------------------------------------------ */
typedef struct ss_file ss_file;

/* Opens and maps `path`. Refuses anything but a regular file (FIFOs, devices, directories)
 * with SS_E_NOT_REGULAR without blocking. An empty file maps to size 0. */
ss_status ss_file_open(const char *path, ss_file **out, ss_error *err);
/* Unmaps and frees. NULL is allowed. */
void ss_file_close(ss_file *file);
/* Size measured by fstat at open time. */
uint64_t ss_file_size(const ss_file *file);
/* Copies `len` bytes at `offset` into dst; SS_E_RANGE if the range is outside the mapped
 * size, SS_E_CHANGED if the file shrank since it was opened. */
ss_status ss_file_read(const ss_file *file, uint64_t offset, void *dst, uint64_t len, ss_error *err);

/* ------------------------------------------------------------------------------------------
 * safetensors. ss_st_parse reads the header of an opened file, validates every rule of the
 * reference implementation, and fills columns (one entry per tensor, in the order of their
 * data offsets). All pointers in ss_st_listing point into memory owned by the listing.
 * ------------------------------------------------------------------------------------------ */

/* Dtypes known to safetensors 0.8, with their size in bits. */
#define SS_DTYPE_LIST(X)                                                                      \
    X(SS_BOOL, "BOOL", "bool", 8)                                                             \
    X(SS_U8, "U8", "uint8", 8)                                                                \
    X(SS_I8, "I8", "int8", 8)                                                                 \
    X(SS_I16, "I16", "int16", 16)                                                             \
    X(SS_U16, "U16", "uint16", 16)                                                            \
    X(SS_F16, "F16", "float16", 16)                                                           \
    X(SS_BF16, "BF16", "bfloat16", 16)                                                        \
    X(SS_I32, "I32", "int32", 32)                                                             \
    X(SS_U32, "U32", "uint32", 32)                                                            \
    X(SS_F32, "F32", "float32", 32)                                                           \
    X(SS_F64, "F64", "float64", 64)                                                           \
    X(SS_I64, "I64", "int64", 64)                                                             \
    X(SS_U64, "U64", "uint64", 64)                                                            \
    X(SS_C64, "C64", "complex64", 64)                                                         \
    X(SS_F8_E4M3, "F8_E4M3", "float8_e4m3fn", 8)                                              \
    X(SS_F8_E5M2, "F8_E5M2", "float8_e5m2", 8)                                                \
    X(SS_F8_E8M0, "F8_E8M0", "float8_e8m0fnu", 8)                                             \
    X(SS_F8_E4M3FNUZ, "F8_E4M3FNUZ", "float8_e4m3fnuz", 8)                                    \
    X(SS_F8_E5M2FNUZ, "F8_E5M2FNUZ", "float8_e5m2fnuz", 8)                                    \
    X(SS_F4, "F4", "float4_e2m1", 4)                                                          \
    X(SS_F6_E2M3, "F6_E2M3", "float6_e2m3", 6)                                                \
    X(SS_F6_E3M2, "F6_E3M2", "float6_e3m2", 6)

typedef enum {
#define SS_DTYPE_ITEM(name, st_name, torch_name, bits) name,
    SS_DTYPE_LIST(SS_DTYPE_ITEM)
#undef SS_DTYPE_ITEM
    SS_DTYPE_COUNT
} ss_dtype;

/* The torch-style name shardscan reports ("bfloat16"; our own lowercase name where torch has
 * none), the safetensors name ("BF16") and the size in bits; NULL / 0 when out of range. */
const char *ss_dtype_name(uint32_t dtype);
const char *ss_dtype_st_name(uint32_t dtype);
uint32_t ss_dtype_bits(uint32_t dtype);

typedef struct {
    uint32_t count;           /* number of tensors */
    uint64_t header_len;      /* N, the JSON length; tensor data starts at 8 + N */
    uint64_t data_end;        /* where the tensors say the data ends (8 + N + last end) */
    /* Per tensor, sorted by data offset: */
    /* UTF-8 names, unescaped, each followed by a NUL (a name may hold NULs of its own):
     * name i is keys[key_offsets[i], key_offsets[i + 1] - 1). */
    uint32_t *key_offsets;    /* count + 1 entries into keys */
    char *keys;
    uint8_t *dtypes;          /* ss_dtype */
    /* Tensor i has the (dtype, shape) numbered shape_of[i] among the distinct ones: shape j
     * is dims[shape_offsets[j], shape_offsets[j + 1]). */
    uint32_t *shape_of;
    uint32_t shape_count;
    uint32_t *shape_offsets;  /* shape_count + 1 entries into dims */
    int64_t *dims;
    uint64_t *offsets;        /* absolute file offset of the first byte */
    uint64_t *nbytes;
    /* __metadata__, as a flat list of alternating key, value strings. */
    uint32_t metadata_count;  /* number of pairs */
    uint32_t *metadata_offsets; /* 2 * metadata_count + 1 entries into metadata */
    char *metadata;
} ss_st_listing;

/* Parses and validates. On SS_OK the listing is complete. On SS_E_ST_TRUNCATED the listing
 * is still filled (the header survived) so callers can tell intact tensors from lost ones;
 * `err` names the first tensor that runs past the end. On any other error the listing is
 * empty. Always call ss_st_listing_free afterwards. */
ss_status ss_st_parse(const ss_file *file, ss_st_listing *out, ss_error *err);
void ss_st_listing_free(ss_st_listing *listing);

/* A shard index (`model.safetensors.index.json`, `pytorch_model.bin.index.json`): the keys of
 * its weight_map in file order, each with the number of its shard among the distinct shard
 * names (in order of first appearance), and metadata.total_size (-1 when absent). */
typedef struct {
    uint32_t count;           /* keys */
    uint32_t *key_offsets;    /* count + 1 entries into keys, laid out as ss_st_listing's */
    char *keys;
    uint32_t *shard_of;       /* count entries into the shards */
    uint32_t shard_count;
    uint32_t *shard_offsets;  /* shard_count + 1 entries into shards */
    char *shards;
    int64_t total_size;
} ss_index_listing;

/* Reads the `len` bytes of an index. Only a plain one is read: UTF-8 JSON whose top-level
 * object holds one weight_map of distinct keys, each mapped to a string, and at most one
 * metadata object whose total_size, if given once, is an integer in int64. Anything else
 * (invalid JSON included) is SS_E_INDEX_UNUSUAL or SS_E_ST_JSON, for the caller to read with
 * a full JSON reader, which decides what it means. Always call ss_index_listing_free. */
ss_status ss_index_parse(const char *data, size_t len, ss_index_listing *out, ss_error *err);
void ss_index_listing_free(ss_index_listing *listing);

/* The index against the `count` names a checkpoint's files hold (`names_len` bytes, separated
 * by NULs; none may hold one), name i in the file numbered file_of[i] (a shard's number in
 * the index, or any larger number for a file it does not name). For index key k,
 * index_state[k] is 0 when no name equals it, 1 when one does in the shard the index names,
 * 2 when one does in another file, found_file[k] (then set) saying which; name_listed[i] is 1
 * when the index holds name i. The names must be distinct. */
ss_status ss_index_compare(const ss_index_listing *index, const char *names, size_t names_len, uint32_t count,
                           const uint32_t *file_of, uint8_t *index_state, uint32_t *found_file, uint8_t *name_listed,
                           ss_error *err);

/* The blocks of `count` tensor names laid end to end in `names` (`names_len` bytes, each
 * name followed by a NUL). A name's block is its first dot-separated component that is one of
 * `containers` (NUL-terminated names, an empty one last) followed by a component of ASCII
 * digits and one more dot: "model.layers.3.mlp.w" is in block "model.layers.3" with the
 * suffix "mlp.w"; a name in no block has the empty head and suffix. Heads and suffixes are
 * numbered among the distinct ones in order of appearance; the names' heads are given as runs
 * of consecutive names that share one (a checkpoint lists its names block by block). Always
 * call ss_block_listing_free. */
typedef struct {
    uint32_t count;
    uint32_t *suffix_of;      /* count entries: each name's suffix, a number into suffixes */
    uint32_t run_count;
    uint32_t *run_head;       /* run_count entries: the head of each run, a number into heads */
    uint32_t *run_end;        /* run_count entries: the number of the name after each run */
    uint32_t head_count, suffix_count;
    uint32_t *head_offsets;   /* head_count + 1 entries into heads: each followed by a NUL */
    uint32_t *suffix_offsets; /* suffix_count + 1 entries into suffixes: the same */
    char *heads, *suffixes;
} ss_block_listing;
ss_status ss_block_split(const char *names, size_t names_len, uint32_t count, const char *containers,
                         ss_block_listing *out, ss_error *err);
void ss_block_listing_free(ss_block_listing *listing);

/* The first of `count` names laid end to end in `names` (`names_len` bytes, each followed by
 * a NUL) that equals an earlier one: *first receives its number, or `count` when the names
 * are distinct. */
ss_status ss_first_repeat(const char *names, size_t names_len, uint32_t count, uint32_t *first, ss_error *err);

/* ------------------------------------------------------------------------------------------
 * Hashing. A job is the logical bytes of one tensor. The common case is one contiguous run
 * (`file`, `offset`, `nbytes`, with nsegments = 0). Otherwise the job streams `nsegments`
 * segments in order, each a strided view: `ndim` dimensions with `shape` and byte `strides`
 * (non-negative) from byte `offset` of file `file`; a segment with ndim = 0 is a contiguous
 * run of `nbytes`. Strided views are walked in row-major order, so the digest equals that of
 * the contiguous tensor. Elements are `itemsize` bytes; SS_JOB_BYTESWAP reverses each element
 * (big-endian sources) so a digest always means little-endian row-major bytes. SS_JOB_CRC32
 * also computes the zlib CRC32 of the bytes as stored, in the order read (before any swap).
 * ss_hash_batch validates every job before it runs any: unknown flags, a segment count with no
 * list, BYTESWAP with an itemsize other than 2, 4, 8 or 16, a strided segment with itemsize 0
 * or more than SS_MAX_DIMS dimensions, a negative shape or stride, a contiguous run that is
 * not a whole number of itemsize elements (itemsize 0 or 1: any length), a file index out of
 * range and every overflow fail that job with SS_E_ARGUMENT (SS_E_RANGE for bytes outside the
 * file) and a message; the job reads nothing.
 * ------------------------------------------------------------------------------------------ */
#define SS_MAX_DIMS 16

typedef struct {
    uint32_t file;            /* index into the batch's files */
    uint32_t ndim;            /* 0 = contiguous run of nbytes */
    uint64_t offset;
    uint64_t nbytes;
    int64_t shape[SS_MAX_DIMS];
    int64_t strides[SS_MAX_DIMS];
} ss_segment;

enum { SS_JOB_BYTESWAP = 1, SS_JOB_CRC32 = 2 };

/* What a job's elements are, for its value counts: X(name, number, torch dtype name). A kind
 * is counted on the bytes as hashed (little-endian, after any swap). NaN and Inf are counted
 * for IEEE kinds and F8_E5M2; F8_E4M3FN has NaN (S.1111.111) and no Inf; a complex kind
 * counts each part as its own float. Numbers are stable. */
#define SS_VALUE_KIND_LIST(X)                  \
    X(SS_VALUES_NONE, 0, "none")               \
    X(SS_VALUES_F64, 1, "float64")             \
    X(SS_VALUES_F32, 2, "float32")             \
    X(SS_VALUES_F16, 3, "float16")             \
    X(SS_VALUES_BF16, 4, "bfloat16")           \
    X(SS_VALUES_F8_E5M2, 5, "float8_e5m2")     \
    X(SS_VALUES_F8_E4M3FN, 6, "float8_e4m3fn") \
    X(SS_VALUES_C64, 7, "complex64")           \
    X(SS_VALUES_C128, 8, "complex128")

typedef enum {
#define SS_KIND_ITEM(name, number, torch_name) name = number,
    SS_VALUE_KIND_LIST(SS_KIND_ITEM)
#undef SS_KIND_ITEM
    SS_VALUE_KIND_COUNT
} ss_value_kind;

/* The torch dtype name of a kind ("none" for SS_VALUES_NONE); NULL when out of range. */
const char *ss_value_kind_name(uint32_t kind);

typedef struct {
    /* The contiguous case, used when nsegments == 0. */
    uint32_t file;
    uint64_t offset;
    uint64_t nbytes;
    /* The general case. The caller keeps `segments` alive until ss_hash_batch returns. */
    const ss_segment *segments;
    uint32_t nsegments;
    uint32_t itemsize;        /* bytes per element: needed for BYTESWAP and strided views */
    uint32_t flags;
    uint32_t value_kind;      /* ss_value_kind; the job's length must be whole elements of it */
    /* Outputs. */
    ss_status status;
    uint32_t crc32;
    uint8_t digest[16];       /* XXH3-128, canonical (big-endian) byte order */
    uint64_t nan_count;       /* NaN elements (parts, for complex); 0 for SS_VALUES_NONE */
    uint64_t inf_count;       /* +-Inf elements likewise */
    uint32_t all_zero;        /* 1 when every byte is zero (also for an empty job), else 0 */
    uint32_t failed_file;     /* on failure: the batch index of the file at fault */
    char message[256];        /* on failure: what went wrong (the file is failed_file) */
} ss_job;

/* Hashes every job on `threads` worker threads (0 = online CPUs), largest jobs first.
 * Each job's outcome is in its own status; one bad job never stops the others. Returns
 * SS_OK when the batch ran (even with failed jobs), or SS_E_NOMEM/SS_E_ARGUMENT when it
 * could not start. Between two
 * windows of a job the pages just hashed are released, so resident memory stays bounded
 * whatever the size of the checkpoint. If `progress` is not NULL, workers add the bytes they
 * have hashed to it atomically as they go, so another thread can show progress. */
ss_status ss_hash_batch(ss_file *const *files, uint32_t nfiles, ss_job *jobs, uint32_t njobs,
                        uint32_t threads, uint64_t *progress);

/* Writes 32 lowercase hex characters per digest into out (no terminators). */
void ss_hex_digests(const ss_job *jobs, uint32_t njobs, char *out);

/* ------------------------------------------------------------------------------------------
 * Whole-file digests (digest.c): SHA-256 (OpenSSL libcrypto, EVP_sha256) and XXH3-128 of
 * every byte of each file, as the hub and sha256sum publish them. Files are digested in
 * parallel, one per worker thread, largest first; memory stays bounded as in ss_hash_batch.
 * ------------------------------------------------------------------------------------------ */
typedef struct {
    /* Outputs. */
    ss_status status;         /* SS_OK, or SS_E_CHANGED for a file that shrank while read */
    uint64_t size;            /* bytes digested: the size measured when the file was opened */
    uint8_t sha256[32];
    uint8_t xxh3[16];         /* XXH3-128, canonical (big-endian) byte order */
    char message[256];        /* on failure: what went wrong (never the path) */
} ss_file_digest;

/* Digests every file of `files` into out[i] (the caller's array of nfiles entries), XXH3-128
 * only when `xxh3` is non-zero (else out[i].xxh3 stays zero), on
 * `threads` threads (0 = online CPUs). A NULL file fails its own entry with SS_E_ARGUMENT.
 * Each entry's outcome is in its own status; returns SS_OK when the batch ran, SS_E_NOMEM or
 * SS_E_ARGUMENT when it could not start. `progress`, if not NULL, receives the bytes read so
 * far, added atomically. */
ss_status ss_digest_files(ss_file *const *files, uint32_t nfiles, ss_file_digest *out, int xxh3, uint32_t threads,
                          uint64_t *progress);

/* ------------------------------------------------------------------------------------------
 * ZIP archives written by torch.save (zip.c). ss_zip_parse reads the end record (ZIP64-aware)
 * and the central directory of an opened file and checks what torch.load never does: every
 * record stored (not compressed, not encrypted), under one top-level folder, names unique,
 * its local header present and agreeing, its data inside the file, no two records overlapping
 * and none reaching into the directory. It also refuses what torch's own reader (miniz) could
 * resolve differently: a second end-record candidate, names equal under ASCII case folding
 * (or to a name torch looks up), names that are not UTF-8, an archive not starting with a
 * local header. Data offsets come from each record's own local header.
 * CRCs are reported, not verified (that costs reading the data: hash jobs do it).
 * ss_zip_walk_local is for forensics on a file with no end record (a cut-short save): it
 * walks local headers from byte 0 and reports every record it finds, `intact` = 0 for the one
 * cut short (its size is then what survived). Both fill columns in central-directory / file
 * order; all pointers point into memory owned by the listing. Thread safe.
 * ------------------------------------------------------------------------------------------ */
typedef struct {
    uint32_t count;
    uint32_t prefix_len;      /* bytes of the shared top-level folder, including its '/' */
    uint32_t *name_offsets;   /* count + 1 entries into names (Arrow string layout) */
    char *names;              /* full entry names ("archive/data/0"), concatenated */
    uint64_t *header_offsets; /* local header position */
    uint64_t *data_offsets;   /* absolute offset of the record's first byte */
    uint64_t *sizes;          /* record length in bytes (stored: compressed == uncompressed) */
    uint32_t *crc32s;         /* as written; 0 may mean the writer computed none */
    uint8_t *intact;          /* 1 = the whole record is in the file */
} ss_zip_listing;

/* On error the listing is empty and err names the file and the record. Always free. */
ss_status ss_zip_parse(const ss_file *file, ss_zip_listing *out, ss_error *err);
/* The same for an archive embedded at [base, base + length) of a file (a DCP .distcp file is
 * several torch.save archives back to back; their offsets are relative to their own start).
 * Offsets in the listing are absolute file offsets. */
ss_status ss_zip_parse_range(const ss_file *file, uint64_t base, uint64_t length, ss_zip_listing *out,
                             ss_error *err);
ss_status ss_zip_walk_local(const ss_file *file, ss_zip_listing *out, ss_error *err);
void ss_zip_listing_free(ss_zip_listing *listing);

#endif
