/* ZIP archives as torch.save writes them: a central directory of stored (uncompressed) records
 * under one top-level folder, ZIP64 always on, sizes in data descriptors after each record.
 *
 * Three layers, each in its own section:
 *  1. Layouts: every on-disk header (end record, ZIP64 locator and end record, central
 *     directory entry, local header, data descriptor) is decoded in exactly one function into
 *     a struct with named fields. Nothing else reads bytes at an offset.
 *  2. The generic reader: finds the end record, copies the central directory, resolves ZIP64
 *     fields and each record's local header, and checks only what any reader needs (every
 *     length and offset inside the archive, with overflow-checked arithmetic).
 *  3. The torch rules (check_torch_archive): what torch.save always writes and torch.load
 *     relies on without checking: stored records, no encryption, one top-level folder, unique
 *     names, local headers agreeing with the directory, records overlapping nothing. And
 *     wherever torch's reader (miniz) would resolve the archive differently from us, a
 *     refusal: a second end-record candidate, names equal ignoring case, names that are not
 *     UTF-8, records miniz takes for folders, an archive not starting with a local header.
 *
 * Everything read from the file is hostile. The central directory is copied into a malloc'd
 * buffer once (so parsing never touches the mapping and cannot fault); the local headers are
 * read through ss_file_read, which is SIGBUS-safe. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* internal.h needs sigjmp_buf, which strict C11 hides */
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* ==== 1. layouts ============================================================================ */

#define SIG_LOCAL 0x04034b50u
#define SIG_CENTRAL 0x02014b50u
#define SIG_EOCD 0x06054b50u
#define SIG_EOCD64 0x06064b50u
#define SIG_LOCATOR64 0x07064b50u
#define SIG_DESCRIPTOR 0x08074b50u

#define EOCD_LEN 22u
#define LOCATOR64_LEN 20u
#define EOCD64_LEN 56u
#define CENTRAL_LEN 46u
#define LOCAL_LEN 30u
#define DESCRIPTOR32_LEN 16u
#define DESCRIPTOR64_LEN 24u
#define EXTRA_HEADER_LEN 4u
#define MAX_COMMENT 65535u
#define MAX_NAME 65535u

/* A field holding its type's maximum means "the real value is in the ZIP64 record or extra
 * field" (APPNOTE 4.4.1.4). */
#define ZIP64_SENTINEL_32 0xFFFFFFFFu
#define ZIP64_SENTINEL_16 0xFFFFu
#define EXTRA_ID_ZIP64 0x0001u

#define METHOD_STORED 0u
#define FLAG_ENCRYPTED 0x0001u         /* general-purpose bit 0 */
#define FLAG_DATA_DESCRIPTOR 0x0008u   /* bit 3: CRC and sizes follow the data */
#define FLAG_STRONG_ENCRYPTION 0x0040u /* bit 6 */
#define FLAG_MASKED_HEADERS 0x2000u    /* bit 13: local headers encrypted (miniz refuses the archive) */
#define DOS_ATTR_DIRECTORY 0x10u        /* in external_attrs: the entry is a folder */

/* Caps that no real checkpoint approaches but that keep a hostile directory from making us
 * allocate gigabytes: a 1,000-shard optimizer state has a few thousand records per file. */
#define MAX_ENTRIES (1u << 20)
#define MAX_CD_BYTES (256u << 20)

static uint16_t le16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static uint32_t le32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static uint64_t le64(const uint8_t *p) { return (uint64_t)le32(p) | ((uint64_t)le32(p + 4) << 32); }

/* End of central directory record (EOCD_LEN bytes + comment). */
typedef struct {
    uint16_t disk, cd_disk;          /* this disk's number, the directory's first disk */
    uint16_t entries_on_disk, entries;
    uint32_t cd_size, cd_offset;
    uint16_t comment_len;
} eocd_record;

static int decode_eocd(const uint8_t *p, eocd_record *r) {
    if (le32(p) != SIG_EOCD) return 0;
    *r = (eocd_record){.disk = le16(p + 4), .cd_disk = le16(p + 6), .entries_on_disk = le16(p + 8),
                       .entries = le16(p + 10), .cd_size = le32(p + 12), .cd_offset = le32(p + 16),
                       .comment_len = le16(p + 20)};
    return 1;
}

static int eocd_is_single_disk(const eocd_record *r) {
    return r->disk == 0 && r->cd_disk == 0 && r->entries_on_disk == r->entries;
}

/* ZIP64 end of central directory locator (LOCATOR64_LEN bytes, right before the EOCD). */
typedef struct {
    uint32_t eocd64_disk;
    uint64_t eocd64_offset;
    uint32_t disks;
} locator64_record;

static int decode_locator64(const uint8_t *p, locator64_record *r) {
    if (le32(p) != SIG_LOCATOR64) return 0;
    *r = (locator64_record){.eocd64_disk = le32(p + 4), .eocd64_offset = le64(p + 8), .disks = le32(p + 16)};
    return 1;
}

/* ZIP64 end of central directory record (EOCD64_LEN bytes without its extensible data). */
typedef struct {
    uint64_t record_size; /* bytes after this field: EOCD64_LEN - 12 and any extensible data */
    uint32_t disk, cd_disk;
    uint64_t entries_on_disk, entries, cd_size, cd_offset;
} eocd64_record;

static int decode_eocd64(const uint8_t *p, eocd64_record *r) {
    if (le32(p) != SIG_EOCD64) return 0;
    *r = (eocd64_record){.record_size = le64(p + 4), .disk = le32(p + 16), .cd_disk = le32(p + 20), .entries_on_disk = le64(p + 24),
                         .entries = le64(p + 32), .cd_size = le64(p + 40), .cd_offset = le64(p + 48)};
    return 1;
}

/* Central directory entry (CENTRAL_LEN bytes, then name, extra field, comment). The sizes and
 * local header offset are 64-bit so that ZIP64 values can replace saturated ones in place. */
typedef struct {
    uint16_t flags, method;
    uint32_t crc;
    uint64_t csize, usize, local_offset;
    uint16_t name_len, extra_len, comment_len;
    uint16_t disk_start;     /* the disk the record starts on */
    uint32_t external_attrs; /* host-specific; the low byte holds MS-DOS attributes */
} central_entry;

static int decode_central(const uint8_t *p, central_entry *e) {
    if (le32(p) != SIG_CENTRAL) return 0;
    *e = (central_entry){.flags = le16(p + 8), .method = le16(p + 10), .crc = le32(p + 16),
                         .csize = le32(p + 20), .usize = le32(p + 24), .name_len = le16(p + 28),
                         .extra_len = le16(p + 30), .comment_len = le16(p + 32), .disk_start = le16(p + 34),
                         .external_attrs = le32(p + 38), .local_offset = le32(p + 42)};
    return 1;
}

/* Local file header (LOCAL_LEN bytes, then name and extra field, then the data). */
typedef struct {
    uint16_t flags, method;
    uint32_t crc, csize, usize;
    uint16_t name_len, extra_len;
} local_header;

static int decode_local(const uint8_t *p, local_header *h) {
    if (le32(p) != SIG_LOCAL) return 0;
    *h = (local_header){.flags = le16(p + 6), .method = le16(p + 8), .crc = le32(p + 14), .csize = le32(p + 18),
                        .usize = le32(p + 22), .name_len = le16(p + 26), .extra_len = le16(p + 28)};
    return 1;
}

/* Data descriptor after a record's data: signature, CRC, then compressed and uncompressed
 * sizes as 32-bit (DESCRIPTOR32_LEN) or, in ZIP64 archives, 64-bit (DESCRIPTOR64_LEN) fields.
 * `p` has at least DESCRIPTOR32_LEN bytes; the 64-bit form is decoded only if `avail` allows. */
typedef struct {
    uint32_t crc;
    uint64_t csize32, usize32;
    uint64_t csize64, usize64;
    int has64;
} data_descriptor;

static int decode_descriptor(const uint8_t *p, uint64_t avail, data_descriptor *d) {
    if (le32(p) != SIG_DESCRIPTOR) return 0;
    *d = (data_descriptor){.crc = le32(p + 4), .csize32 = le32(p + 8), .usize32 = le32(p + 12)};
    if (avail >= DESCRIPTOR64_LEN) d->has64 = 1, d->csize64 = le64(p + 8), d->usize64 = le64(p + 16);
    return 1;
}

/* One field of an extra block: id, length, then `len` bytes. Returns 0 when the block ends
 * (fewer than EXTRA_HEADER_LEN bytes left) and -1 when the field runs past it. */
typedef struct {
    uint16_t id, len;
    const uint8_t *data;
} extra_field;

static int next_extra_field(const uint8_t *extra, uint32_t extra_len, uint32_t *pos, extra_field *f) {
    if (*pos + EXTRA_HEADER_LEN > extra_len) return 0;
    const uint8_t *p = extra + *pos;
    *f = (extra_field){.id = le16(p), .len = le16(p + 2), .data = p + EXTRA_HEADER_LEN};
    if ((uint32_t)f->len > extra_len - *pos - EXTRA_HEADER_LEN) return -1;
    *pos += EXTRA_HEADER_LEN + f->len;
    return 1;
}

/* Applies the ZIP64 extra field to a central entry: only the values whose 32-bit slot is
 * saturated are present, in the order uncompressed size, compressed size, local header
 * offset. Returns 0 for a damaged field, or a saturated slot with no ZIP64 field. */
static int resolve_zip64_extra(const uint8_t *extra, central_entry *e) {
    uint32_t pos = 0;
    extra_field f;
    int more;
    while ((more = next_extra_field(extra, e->extra_len, &pos, &f)) > 0) {
        if (f.id != EXTRA_ID_ZIP64) continue;
        uint64_t *slots[3] = {&e->usize, &e->csize, &e->local_offset};
        uint32_t used = 0;
        for (int k = 0; k < 3; k++) {
            if (*slots[k] != ZIP64_SENTINEL_32) continue;
            if (used + 8 > f.len) return 0;
            *slots[k] = le64(f.data + used);
            used += 8;
        }
        return 1;
    }
    if (more < 0) return 0;
    return e->usize != ZIP64_SENTINEL_32 && e->csize != ZIP64_SENTINEL_32 && e->local_offset != ZIP64_SENTINEL_32;
}

/* ==== listing columns ========================================================================= */

void ss_zip_listing_free(ss_zip_listing *listing) {
    if (!listing) return;
    free(listing->name_offsets);
    free(listing->names);
    free(listing->header_offsets);
    free(listing->data_offsets);
    free(listing->sizes);
    free(listing->crc32s);
    free(listing->intact);
    memset(listing, 0, sizeof *listing);
}

/* Growable columns; `cap` entries allocated, names grow separately. */
typedef struct {
    ss_zip_listing *out;
    uint32_t cap;
    uint64_t names_cap;
    uint64_t names_len;
} builder;

static int builder_reserve(builder *b, uint32_t want) {
    if (want <= b->cap) return 1;
    uint32_t cap = b->cap ? b->cap : 16;
    while (cap < want) cap = cap > MAX_ENTRIES / 2 ? MAX_ENTRIES + 1 : cap * 2;
    ss_zip_listing *o = b->out;
    void *p;
#define GROW(field, n)                                            \
    p = realloc(o->field, (size_t)(n) * sizeof *o->field);        \
    if (!p) return 0;                                             \
    o->field = p;
    GROW(name_offsets, cap + 1)
    GROW(header_offsets, cap)
    GROW(data_offsets, cap)
    GROW(sizes, cap)
    GROW(crc32s, cap)
    GROW(intact, cap)
#undef GROW
    if (b->cap == 0) o->name_offsets[0] = 0;
    b->cap = cap;
    return 1;
}

static int builder_add(builder *b, const char *name, uint32_t name_len, uint64_t header, uint64_t data,
                       uint64_t size, uint32_t crc, uint8_t intact) {
    ss_zip_listing *o = b->out;
    if (!builder_reserve(b, o->count + 1)) return 0;
    if (b->names_len + name_len > b->names_cap) {
        uint64_t cap = b->names_cap ? b->names_cap : 256;
        while (cap < b->names_len + name_len) cap *= 2;
        char *p = realloc(o->names, (size_t)cap);
        if (!p) return 0;
        o->names = p;
        b->names_cap = cap;
    }
    if (name_len) memcpy(o->names + b->names_len, name, name_len);
    b->names_len += name_len;
    uint32_t i = o->count++;
    o->name_offsets[i + 1] = (uint32_t)b->names_len;
    o->header_offsets[i] = header;
    o->data_offsets[i] = data;
    o->sizes[i] = size;
    o->crc32s[i] = crc;
    o->intact[i] = intact;
    return 1;
}

/* ==== 2. the generic reader =================================================================== */

/* One record as the reader resolved it. Positions are relative to the archive's start. */
typedef struct {
    central_entry central; /* ZIP64 values applied */
    local_header local;
    const char *name;      /* the central directory's copy, central.name_len bytes */
    uint64_t data_offset;  /* after the local header's own name and extra field */
} zip_record;

/* An archive occupying [base, base + size) of `file`. */
typedef struct {
    const ss_file *file;
    uint64_t base, size;
    uint64_t eocd_offset;
    uint64_t last_eocd_signature; /* the last "PK\5\6" with room for an end record after it */
    uint64_t entries, cd_offset, cd_size;
    uint64_t cd_limit;  /* the directory must end here: at the ZIP64 record or the EOCD */
    uint8_t *cd;        /* the central directory, copied */
    zip_record *records;
    uint32_t count;
} zip_archive;

static void archive_free(zip_archive *a) {
    free(a->cd);
    free(a->records);
    a->cd = NULL;
    a->records = NULL;
}

/* Finds the end record. Accepts a candidate only if its comment runs exactly to the end of
 * the archive, so a stray "PK\5\6" inside tensor bytes cannot be mistaken for the real one.
 * Also notes the last signature of all with EOCD_LEN bytes after it: the one a reader that
 * ignores the comment length (miniz, hence torch) takes. */
static ss_status find_eocd(zip_archive *a, eocd_record *eocd, ss_error *err) {
    if (a->size < EOCD_LEN)
        return ss_fail(err, SS_E_ZIP_NO_EOCD, "%llu bytes is too small for a zip end record (truncated?)",
                       (unsigned long long)a->size);
    uint64_t tail_len = a->size < EOCD_LEN + MAX_COMMENT ? a->size : EOCD_LEN + MAX_COMMENT;
    uint64_t tail_start = a->size - tail_len;
    uint8_t *tail = malloc((size_t)tail_len);
    if (!tail) return ss_fail(err, SS_E_NOMEM, "out of memory");
    ss_status st = ss_file_read(a->file, a->base + tail_start, tail, tail_len, err);
    int found = 0, seen = 0;
    for (uint64_t i = tail_len - EOCD_LEN + 1; st == SS_OK && !found && i-- > 0;) {
        if (!decode_eocd(tail + i, eocd)) continue;
        if (!seen) a->last_eocd_signature = tail_start + i, seen = 1;
        if (i + EOCD_LEN + eocd->comment_len == tail_len) a->eocd_offset = tail_start + i, found = 1;
    }
    free(tail);
    if (st != SS_OK) return st;
    if (!found) return ss_fail(err, SS_E_ZIP_NO_EOCD, "no zip end-of-central-directory record (truncated?)");
    return SS_OK;
}

/* Reads the ZIP64 end record that `loc` points at; its fields replace the EOCD's. */
static ss_status read_eocd64(zip_archive *a, const locator64_record *loc, ss_error *err) {
    uint64_t record_end;
    if (loc->eocd64_disk != 0 || loc->disks != 1)
        return ss_fail(err, SS_E_ZIP_CORRUPT, "multi-disk zip archives are not supported");
    if (!ss_add_u64(loc->eocd64_offset, EOCD64_LEN, &record_end) || record_end > a->eocd_offset - LOCATOR64_LEN)
        return ss_fail(err, SS_E_ZIP_CORRUPT, "ZIP64 end record at %llu lies outside the file",
                       (unsigned long long)loc->eocd64_offset);
    uint8_t raw[EOCD64_LEN];
    ss_status st = ss_file_read(a->file, a->base + loc->eocd64_offset, raw, EOCD64_LEN, err);
    if (st != SS_OK) return st;
    eocd64_record r;
    if (!decode_eocd64(raw, &r))
        return ss_fail(err, SS_E_ZIP_CORRUPT, "ZIP64 locator points at %llu, which is no ZIP64 end record",
                       (unsigned long long)loc->eocd64_offset);
    if (r.disk != 0 || r.cd_disk != 0 || r.entries_on_disk != r.entries)
        return ss_fail(err, SS_E_ZIP_CORRUPT, "multi-disk zip archives are not supported");
    if (r.record_size < EOCD64_LEN - 12)
        return ss_fail(err, SS_E_ZIP_CORRUPT, "ZIP64 end record claims %llu bytes, fewer than its own fields",
                       (unsigned long long)r.record_size);
    a->entries = r.entries;
    a->cd_size = r.cd_size;
    a->cd_offset = r.cd_offset;
    a->cd_limit = loc->eocd64_offset;
    return SS_OK;
}

/* The end record, then the ZIP64 records a locator right before it points at (torch always
 * writes one): fills entries, cd_offset, cd_size and cd_limit. */
static ss_status read_end_records(zip_archive *a, ss_error *err) {
    eocd_record eocd = {0};
    ss_status st = find_eocd(a, &eocd, err);
    if (st != SS_OK) return st;
    a->entries = eocd.entries;
    a->cd_size = eocd.cd_size;
    a->cd_offset = eocd.cd_offset;
    a->cd_limit = a->eocd_offset;
    /* Disk numbers saturated to ZIP64_SENTINEL_16 defer to the ZIP64 record. */
    int deferred = eocd.disk == ZIP64_SENTINEL_16 || eocd.cd_disk == ZIP64_SENTINEL_16;
    if (!eocd_is_single_disk(&eocd) && !deferred)
        return ss_fail(err, SS_E_ZIP_CORRUPT, "multi-disk zip archives are not supported");
    if (a->eocd_offset >= LOCATOR64_LEN) {
        uint8_t raw[LOCATOR64_LEN];
        st = ss_file_read(a->file, a->base + a->eocd_offset - LOCATOR64_LEN, raw, LOCATOR64_LEN, err);
        if (st != SS_OK) return st;
        locator64_record loc;
        if (decode_locator64(raw, &loc)) return read_eocd64(a, &loc, err);
    }
    if (!eocd_is_single_disk(&eocd))
        return ss_fail(err, SS_E_ZIP_CORRUPT, "multi-disk zip archives are not supported");
    return SS_OK;
}

/* The directory lies before the end records and is small enough to copy; copies it. */
static ss_status read_central_directory(zip_archive *a, ss_error *err) {
    uint64_t cd_end;
    if (!ss_add_u64(a->cd_offset, a->cd_size, &cd_end) || cd_end > a->cd_limit)
        return ss_fail(err, SS_E_ZIP_CORRUPT, "central directory %llu+%llu does not end before the end record at %llu",
                       (unsigned long long)a->cd_offset, (unsigned long long)a->cd_size,
                       (unsigned long long)a->cd_limit);
    if (a->entries > MAX_ENTRIES || a->cd_size > MAX_CD_BYTES)
        return ss_fail(err, SS_E_ZIP_TOO_MANY, "%llu entries in a %llu-byte directory (limit %u entries)",
                       (unsigned long long)a->entries, (unsigned long long)a->cd_size, MAX_ENTRIES);
    if (a->entries * CENTRAL_LEN > a->cd_size)
        return ss_fail(err, SS_E_ZIP_CORRUPT, "%llu entries cannot fit in a %llu-byte central directory",
                       (unsigned long long)a->entries, (unsigned long long)a->cd_size);
    a->cd = malloc(a->cd_size ? (size_t)a->cd_size : 1);
    a->records = malloc(a->entries ? (size_t)a->entries * sizeof *a->records : 1);
    if (!a->cd || !a->records) return ss_fail(err, SS_E_NOMEM, "out of memory");
    return ss_file_read(a->file, a->base + a->cd_offset, a->cd, a->cd_size, err);
}

/* Decodes directory entry `n` at *pos of the copied directory and advances *pos past it. */
static ss_status decode_directory_entry(const zip_archive *a, uint64_t n, uint64_t *pos, zip_record *r,
                                        ss_error *err) {
    const uint8_t *h = a->cd + *pos;
    if (a->cd_size - *pos < CENTRAL_LEN || !decode_central(h, &r->central))
        return ss_fail(err, SS_E_ZIP_CORRUPT, "central directory entry %llu of %llu is missing or damaged",
                       (unsigned long long)n, (unsigned long long)a->entries);
    central_entry *e = &r->central;
    uint64_t var_len = (uint64_t)e->name_len + e->extra_len + e->comment_len;
    if (a->cd_size - *pos - CENTRAL_LEN < var_len)
        return ss_fail(err, SS_E_ZIP_CORRUPT, "central directory entry %llu runs past the directory",
                       (unsigned long long)n);
    if (e->disk_start != 0)
        return ss_fail(err, SS_E_ZIP_CORRUPT, "central directory entry %llu starts on disk %u: multi-disk zip archives are not supported",
                       (unsigned long long)n, e->disk_start);
    r->name = (const char *)h + CENTRAL_LEN;
    if (e->name_len == 0 || memchr(r->name, 0, e->name_len))
        return ss_fail(err, SS_E_ZIP_CORRUPT, "central directory entry %llu has an empty or NUL-bearing name",
                       (unsigned long long)n);
    if (!resolve_zip64_extra(h + CENTRAL_LEN + e->name_len, e)) {
        char qname[96];
        ss_quote_name(qname, sizeof qname, r->name, e->name_len);
        return ss_fail(err, SS_E_ZIP_CORRUPT, "record '%s' has a damaged ZIP64 extra field", qname);
    }
    *pos += CENTRAL_LEN + var_len;
    return SS_OK;
}

/* Reads a record's local header; the data starts after the local header's own name and extra
 * field, which differ from the central copy (torch pads the local extra field to align
 * tensors), and must end inside the archive. */
static ss_status read_local_header(const zip_archive *a, zip_record *r, ss_error *err) {
    const central_entry *e = &r->central;
    char qname[96];
    ss_quote_name(qname, sizeof qname, r->name, e->name_len);
    uint64_t header_end;
    if (!ss_add_u64(e->local_offset, LOCAL_LEN, &header_end) || header_end > a->size)
        return ss_fail(err, SS_E_ZIP_PAST_EOF, "record '%s' has its header at %llu, past the end of the %llu-byte archive",
                       qname, (unsigned long long)e->local_offset, (unsigned long long)a->size);
    uint8_t raw[LOCAL_LEN];
    ss_status st = ss_file_read(a->file, a->base + e->local_offset, raw, LOCAL_LEN, err);
    if (st != SS_OK) return st;
    if (!decode_local(raw, &r->local))
        return ss_fail(err, SS_E_ZIP_LOCAL_HEADER, "record '%s': no matching local header at %llu", qname,
                       (unsigned long long)e->local_offset);
    uint64_t data_end;
    if (!ss_add_u64(header_end, (uint64_t)r->local.name_len + r->local.extra_len, &r->data_offset) ||
        !ss_add_u64(r->data_offset, e->csize, &data_end) || data_end > a->size)
        return ss_fail(err, SS_E_ZIP_PAST_EOF, "record '%s' (%llu bytes) runs past the end of the %llu-byte archive",
                       qname, (unsigned long long)e->csize, (unsigned long long)a->size);
    return SS_OK;
}

/* The generic reader after the end records: directory, every record's local header. */
static ss_status read_records(zip_archive *a, ss_error *err) {
    ss_status st = read_central_directory(a, err);
    if (st != SS_OK) return st;
    /* Every entry is decoded before any local header is read, so that all the local headers
     * can be asked for at once: on a cold cache each is a read of its own, scattered through
     * the archive, and one at a time they cost a disk round trip per tensor. */
    uint64_t pos = 0, decoded = 0;
    ss_error directory_err;
    ss_status directory_st = SS_OK;
    for (; decoded < a->entries; decoded++) {
        directory_st = decode_directory_entry(a, decoded, &pos, &a->records[decoded], &directory_err);
        if (directory_st != SS_OK) break;
    }
    for (uint64_t n = 0; n < decoded; n++) { /* the header, its name, and a page for its extra field */
        const central_entry *e = &a->records[n].central;
        if (e->local_offset < a->size) ss_file_prefetch(a->file, a->base + e->local_offset, LOCAL_LEN + e->name_len + 4096u);
    }
    /* Errors keep the order of a single pass: record n's local header before entry n + 1. */
    for (uint64_t n = 0; n < decoded; n++) {
        st = read_local_header(a, &a->records[n], err);
        if (st != SS_OK) return st;
    }
    if (directory_st != SS_OK) {
        *err = directory_err;
        return directory_st;
    }
    a->count = (uint32_t)a->entries;
    return SS_OK;
}

/* ==== 3. the torch rules ===================================================================== */

/* Where torch's reader (caffe2/serialize/inline_container.cc over miniz) could resolve the
 * archive differently from us, we refuse rather than certify bytes torch does not load. */

/* miniz scans backwards for the last end-record signature with room for a record after it,
 * whatever its comment length says. Ours must be that one, or torch may read another archive
 * (one hidden in our end record's comment, say) with other tensors and correct CRCs. */
static ss_status check_one_end_record(const zip_archive *a, ss_error *err) {
    if (a->last_eocd_signature == a->eocd_offset) return SS_OK;
    return ss_fail(err, SS_E_ZIP_TWO_EOCD,
                   "a second end-of-central-directory signature at %llu follows the end record at %llu: "
                   "torch may read the archive it describes",
                   (unsigned long long)a->last_eocd_signature, (unsigned long long)a->eocd_offset);
}

/* torch.load takes a file for a zip archive only if it starts with a local header signature;
 * anything else it unpickles from byte 0 as a legacy (pre-1.6) file, never reading our directory. */
static ss_status check_starts_with_local_header(const zip_archive *a, ss_error *err) {
    uint8_t head[4];
    ss_status st = ss_file_read(a->file, a->base, head, sizeof head, err); /* size >= EOCD_LEN */
    if (st != SS_OK || le32(head) == SIG_LOCAL) return st;
    return ss_fail(err, SS_E_ZIP_NOT_AT_START,
                   "archive starts with bytes %02x %02x %02x %02x, not a zip local header: "
                   "torch.load would read it as a legacy file",
                   head[0], head[1], head[2], head[3]);
}

/* A name that is not UTF-8, for a message: printable ASCII as is, every other byte as \xNN. */
static void quote_bytes(char *out, size_t cap, const char *name, uint32_t len) {
    size_t o = 0;
    uint32_t i = 0;
    for (; i < len && o + 8 < cap; i++) {
        unsigned char c = (unsigned char)name[i];
        if (c >= 0x20 && c < 0x7f && c != '\\') out[o++] = (char)c;
        else o += (size_t)snprintf(out + o, cap - o, "\\x%02x", c);
    }
    memcpy(out + o, i < len ? "..." : "", i < len ? 4 : 1);
}

/* miniz folds ASCII letters only (MZ_TOLOWER), so do we. */
static unsigned char fold_ascii(unsigned char c) { return c >= 'A' && c <= 'Z' ? (unsigned char)(c + ('a' - 'A')) : c; }

static int compare_folded(const char *x, uint32_t x_len, const char *y, uint32_t y_len) {
    uint32_t n = x_len < y_len ? x_len : y_len;
    for (uint32_t i = 0; i < n; i++) {
        int c = fold_ascii((unsigned char)x[i]) - fold_ascii((unsigned char)y[i]);
        if (c) return c;
    }
    return (x_len > y_len) - (x_len < y_len);
}

/* Records torch.load looks up by a fixed name inside the archive's folder
 * (inline_container.cc, torch/serialization.py); miniz finds them ignoring case. */
static const char *const TORCH_FIXED_NAMES[] = {"data.pkl",      "byteorder",          "version",
                                                ".data/version", ".format_version",    ".storage_alignment",
                                                ".data/serialization_id"};

/* A lone "BYTEORDER" is the "byteorder" record to torch but absent to an exact lookup. */
static ss_status check_fixed_name_case(const zip_archive *a, uint32_t prefix_len, ss_error *err) {
    for (uint32_t i = 0; i < a->count; i++) {
        const zip_record *r = &a->records[i];
        const char *rest = r->name + prefix_len;
        uint32_t rest_len = r->central.name_len - prefix_len;
        for (size_t k = 0; k < sizeof TORCH_FIXED_NAMES / sizeof *TORCH_FIXED_NAMES; k++) {
            const char *fixed = TORCH_FIXED_NAMES[k];
            uint32_t fixed_len = (uint32_t)strlen(fixed);
            if (compare_folded(rest, rest_len, fixed, fixed_len) != 0 || memcmp(rest, fixed, fixed_len) == 0) continue;
            char qname[96];
            ss_quote_name(qname, sizeof qname, r->name, r->central.name_len);
            return ss_fail(err, SS_E_ZIP_CASE, "record '%s' differs from '%s' only in case: torch reads it as that record",
                           qname, fixed);
        }
    }
    return SS_OK;
}

/* A record as torch.save writes it: stored, not encrypted, under the archive's top-level
 * folder (`prefix_len` bytes of the first record's name, its '/' included), its local header
 * naming it and, without a data descriptor, carrying the same CRC and sizes. `local_name` is
 * a MAX_NAME-byte scratch buffer. */
static ss_status check_torch_record(const zip_archive *a, const zip_record *r, uint32_t prefix_len,
                                    char *local_name, ss_error *err) {
    const central_entry *e = &r->central;
    const local_header *l = &r->local;
    char qname[96];
    ss_quote_name(qname, sizeof qname, r->name, e->name_len);
    if (e->flags & (FLAG_ENCRYPTED | FLAG_STRONG_ENCRYPTION | FLAG_MASKED_HEADERS))
        return ss_fail(err, SS_E_ZIP_ENCRYPTED, "record '%s' is encrypted", qname);
    if (!ss_utf8_valid((const unsigned char *)r->name, e->name_len)) {
        quote_bytes(qname, sizeof qname, r->name, e->name_len);
        return ss_fail(err, SS_E_ZIP_NAME_UTF8,
                       "record name '%s' is not valid UTF-8: torch cannot list the archive's records", qname);
    }
    /* miniz extracts nothing from what it takes for a folder: torch would get uninitialised memory. */
    if ((e->external_attrs & DOS_ATTR_DIRECTORY) || r->name[e->name_len - 1] == '/')
        return ss_fail(err, SS_E_ZIP_DIRECTORY, "record '%s' is marked as a folder: torch reads none of its bytes",
                       qname);
    if (e->method != METHOD_STORED)
        return ss_fail(err, SS_E_ZIP_COMPRESSED, "record '%s' is compressed (method %u); torch writes stored records",
                       qname, e->method);
    if (e->csize != e->usize)
        return ss_fail(err, SS_E_ZIP_CORRUPT, "stored record '%s' has compressed size %llu != size %llu", qname,
                       (unsigned long long)e->csize, (unsigned long long)e->usize);
    const char *first = a->records[0].name;
    if (e->name_len <= prefix_len || memcmp(r->name, first, prefix_len) != 0) {
        char qprefix[96];
        ss_quote_name(qprefix, sizeof qprefix, first, prefix_len - 1);
        return ss_fail(err, SS_E_ZIP_PREFIX, "entry '%s' is outside the archive's top-level folder '%s'", qname,
                       qprefix);
    }
    if (l->name_len != e->name_len || l->method != e->method)
        return ss_fail(err, SS_E_ZIP_LOCAL_HEADER, "record '%s': no matching local header at %llu", qname,
                       (unsigned long long)e->local_offset);
    ss_status st = ss_file_read(a->file, a->base + e->local_offset + LOCAL_LEN, local_name, e->name_len, err);
    if (st != SS_OK) return st;
    if (memcmp(local_name, r->name, e->name_len) != 0)
        return ss_fail(err, SS_E_ZIP_LOCAL_HEADER, "record '%s': local header at %llu names another file", qname,
                       (unsigned long long)e->local_offset);
    int csize_agrees = l->csize == ZIP64_SENTINEL_32 || l->csize == e->csize;
    int usize_agrees = l->usize == ZIP64_SENTINEL_32 || l->usize == e->usize;
    if (!(l->flags & FLAG_DATA_DESCRIPTOR) && (l->crc != e->crc || !csize_agrees || !usize_agrees))
        return ss_fail(err, SS_E_ZIP_LOCAL_HEADER, "record '%s': local header disagrees with the central directory",
                       qname);
    return SS_OK;
}

/* qsort has no context argument in C11, so each sort key travels with its index. */
typedef struct {
    const char *name;
    uint32_t len, index;
} named;

static int by_name(const void *a, const void *b) {
    const named *x = a, *y = b;
    int c = memcmp(x->name, y->name, x->len < y->len ? x->len : y->len);
    return c ? c : (x->len > y->len) - (x->len < y->len);
}

/* Case-folded first, so that names equal but for case sort next to each other. */
static int by_folded_name(const void *a, const void *b) {
    const named *x = a, *y = b;
    int c = compare_folded(x->name, x->len, y->name, y->len);
    return c ? c : by_name(a, b);
}

/* Names unique, and unique ignoring case: miniz looks records up case-insensitively by a
 * binary search, so which of "data/a" and "data/A" torch loads depends on the directory. */
static ss_status check_unique_names(const zip_archive *a, ss_error *err) {
    named *names = malloc((size_t)a->count * sizeof *names);
    if (!names) return ss_fail(err, SS_E_NOMEM, "out of memory");
    for (uint32_t i = 0; i < a->count; i++) names[i] = (named){a->records[i].name, a->records[i].central.name_len, i};
    qsort(names, a->count, sizeof *names, by_folded_name);
    ss_status st = SS_OK;
    for (uint32_t k = 1; k < a->count && st == SS_OK; k++) {
        const named *x = &names[k - 1], *y = &names[k];
        if (compare_folded(x->name, x->len, y->name, y->len) != 0) continue;
        char qx[96], qy[96];
        ss_quote_name(qx, sizeof qx, x->name, x->len);
        ss_quote_name(qy, sizeof qy, y->name, y->len);
        if (by_name(x, y) == 0)
            st = ss_fail(err, SS_E_ZIP_DUPLICATE, "zip entry '%s' appears twice", qx);
        else
            st = ss_fail(err, SS_E_ZIP_CASE, "records '%s' and '%s' differ only in case: torch may load either", qx, qy);
    }
    free(names);
    return st;
}

typedef struct {
    uint64_t offset;
    uint32_t index;
} placed;

static int by_offset(const void *a, const void *b) {
    const placed *x = a, *y = b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

/* Sorted by local header, each record [header, data end) must end before the next begins,
 * and the last before the central directory. */
static ss_status check_no_overlap(const zip_archive *a, ss_error *err) {
    placed *order = malloc((size_t)a->count * sizeof *order);
    if (!order) return ss_fail(err, SS_E_NOMEM, "out of memory");
    for (uint32_t i = 0; i < a->count; i++) order[i] = (placed){a->records[i].central.local_offset, i};
    qsort(order, a->count, sizeof *order, by_offset);
    ss_status st = SS_OK;
    for (uint32_t k = 0; k < a->count && st == SS_OK; k++) {
        const zip_record *r = &a->records[order[k].index];
        uint64_t end = r->data_offset + r->central.usize; /* inside the archive: read_local_header */
        uint64_t next = k + 1 < a->count ? order[k + 1].offset : a->cd_offset;
        if (end <= next) continue;
        char qa[96], qb[96];
        ss_quote_name(qa, sizeof qa, r->name, r->central.name_len);
        if (k + 1 == a->count) {
            st = ss_fail(err, SS_E_ZIP_OVERLAP, "record '%s' (ends at %llu) overlaps the central directory at %llu",
                         qa, (unsigned long long)(a->base + end), (unsigned long long)(a->base + next));
            break;
        }
        const zip_record *s = &a->records[order[k + 1].index];
        ss_quote_name(qb, sizeof qb, s->name, s->central.name_len);
        st = ss_fail(err, SS_E_ZIP_OVERLAP, "record '%s' (ends at %llu) overlaps record '%s' (starts at %llu)", qa,
                     (unsigned long long)(a->base + end), qb, (unsigned long long)(a->base + next));
    }
    free(order);
    return st;
}

/* Every torch rule over an archive the generic reader accepted. Sets *prefix_len. */
static ss_status check_torch_archive(const zip_archive *a, uint32_t *prefix_len, ss_error *err) {
    *prefix_len = 0;
    if (a->count == 0) return SS_OK;
    /* One top-level folder: the first entry's text up to its first '/' fixes it. */
    const zip_record *first = &a->records[0];
    const char *slash = memchr(first->name, '/', first->central.name_len);
    if (!slash || slash == first->name) {
        char qname[96];
        ss_quote_name(qname, sizeof qname, first->name, first->central.name_len);
        return ss_fail(err, SS_E_ZIP_PREFIX, "first entry '%s' is not inside a top-level folder", qname);
    }
    *prefix_len = (uint32_t)(slash - first->name) + 1;
    ss_status st = check_starts_with_local_header(a, err);
    if (st != SS_OK) return st;
    char *local_name = malloc(MAX_NAME);
    if (!local_name) return ss_fail(err, SS_E_NOMEM, "out of memory");
    for (uint32_t i = 0; i < a->count && st == SS_OK; i++)
        st = check_torch_record(a, &a->records[i], *prefix_len, local_name, err);
    free(local_name);
    if (st == SS_OK) st = check_unique_names(a, err);
    if (st == SS_OK) st = check_fixed_name_case(a, *prefix_len, err);
    if (st == SS_OK) st = check_no_overlap(a, err);
    return st;
}

static ss_status fill_listing(const zip_archive *a, uint32_t prefix_len, ss_zip_listing *out, ss_error *err) {
    builder b = {out, 0, 0, 0};
    out->prefix_len = prefix_len;
    if (!builder_reserve(&b, a->count ? a->count : 1)) return ss_fail(err, SS_E_NOMEM, "out of memory");
    for (uint32_t i = 0; i < a->count; i++) {
        const zip_record *r = &a->records[i];
        if (!builder_add(&b, r->name, r->central.name_len, a->base + r->central.local_offset,
                         a->base + r->data_offset, r->central.usize, r->central.crc, 1))
            return ss_fail(err, SS_E_NOMEM, "out of memory");
    }
    return SS_OK;
}

ss_status ss_zip_parse(const ss_file *file, ss_zip_listing *out, ss_error *err) {
    return ss_zip_parse_range(file, 0, file->size, out, err);
}

ss_status ss_zip_parse_range(const ss_file *file, uint64_t base, uint64_t length, ss_zip_listing *out,
                             ss_error *err) {
    memset(out, 0, sizeof *out);
    uint64_t range_end;
    if (!ss_add_u64(base, length, &range_end) || range_end > file->size)
        return ss_fail(err, SS_E_RANGE, "archive range %llu+%llu outside a %llu-byte file",
                       (unsigned long long)base, (unsigned long long)length, (unsigned long long)file->size);
    zip_archive a = {.file = file, .base = base, .size = length};
    uint32_t prefix_len = 0;
    ss_status st = read_end_records(&a, err);
    if (st == SS_OK) st = check_one_end_record(&a, err);
    if (st == SS_OK) st = read_records(&a, err);
    if (st == SS_OK) st = check_torch_archive(&a, &prefix_len, err);
    if (st == SS_OK) st = fill_listing(&a, prefix_len, out, err);
    archive_free(&a);
    if (st != SS_OK) ss_zip_listing_free(out);
    return st;
}

/* ==== forensics: walk local headers when there is no central directory =================== */

/* Searches from `data` for a data descriptor whose size fields equal its distance from
 * `data`: the signature alone could occur inside tensor bytes, the matching size cannot
 * plausibly. Returns 1 and fills size/crc/desc_len when found. */
static int find_descriptor(const ss_file *file, uint64_t data, uint64_t *size, uint32_t *crc, uint32_t *desc_len,
                           ss_status *st, ss_error *err) {
    enum { CHUNK = 1 << 20, OVERLAP = DESCRIPTOR64_LEN };
    uint8_t *buf = malloc(CHUNK + OVERLAP);
    if (!buf) {
        *st = ss_fail(err, SS_E_NOMEM, "out of memory");
        return 0;
    }
    int found = 0;
    for (uint64_t at = data; !found && at < file->size; at += CHUNK) {
        uint64_t len = file->size - at < CHUNK + OVERLAP ? file->size - at : CHUNK + OVERLAP;
        *st = ss_file_read(file, at, buf, len, err);
        if (*st != SS_OK) break;
        for (uint64_t i = 0; !found && i + DESCRIPTOR32_LEN <= len; i++) {
            data_descriptor d;
            if (buf[i] != 'P' || !decode_descriptor(buf + i, len - i, &d)) continue;
            uint64_t dist = at + i - data;
            if (d.csize32 == dist && d.usize32 == dist && dist < ZIP64_SENTINEL_32)
                found = 1, *desc_len = DESCRIPTOR32_LEN;
            else if (d.has64 && d.csize64 == dist && d.usize64 == dist)
                found = 1, *desc_len = DESCRIPTOR64_LEN;
            if (found) *size = dist, *crc = d.crc;
        }
        if (len < CHUNK + OVERLAP) break;
    }
    free(buf);
    return found;
}

/* One local header at `at`: its record goes into the listing. Sets *next to the following
 * header, or returns 0 in *more when the walk must stop (cut short, or not a header). */
static ss_status walk_one(const ss_file *file, uint64_t at, builder *b, char *name, uint64_t *next, int *more,
                          ss_error *err) {
    uint8_t raw[LOCAL_LEN];
    local_header h;
    *more = 0;
    ss_status st = ss_file_read(file, at, raw, LOCAL_LEN, err);
    if (st != SS_OK || !decode_local(raw, &h)) return st; /* the central directory, or garbage */
    if (b->out->count >= MAX_ENTRIES)
        return ss_fail(err, SS_E_ZIP_TOO_MANY, "more than %u local headers", MAX_ENTRIES);
    uint64_t data = at + LOCAL_LEN + h.name_len + h.extra_len; /* < 2^64: at <= size, small adds */
    if (data > file->size) return SS_OK; /* header cut short: nothing of this record survived */
    st = ss_file_read(file, at + LOCAL_LEN, name, h.name_len, err);
    if (st != SS_OK) return st;
    uint64_t size = 0;
    uint32_t crc = h.crc, desc_len = 0;
    uint8_t intact;
    if (!(h.flags & FLAG_DATA_DESCRIPTOR) && h.csize != ZIP64_SENTINEL_32) {
        size = h.csize;
        intact = size <= file->size - data;
        *next = intact ? data + size : file->size;
    } else if (find_descriptor(file, data, &size, &crc, &desc_len, &st, err)) {
        intact = 1;
        *next = data + size + desc_len;
    } else {
        if (st != SS_OK) return st;
        intact = 0;
        crc = 0;
    }
    if (!intact) size = file->size - data; /* what survived of it */
    if (!builder_add(b, name, h.name_len, at, data, size, crc, intact)) return ss_fail(err, SS_E_NOMEM, "out of memory");
    *more = intact;
    return SS_OK;
}

ss_status ss_zip_walk_local(const ss_file *file, ss_zip_listing *out, ss_error *err) {
    memset(out, 0, sizeof *out);
    builder b = {out, 0, 0, 0};
    char *name = malloc(MAX_NAME);
    if (!name) return ss_fail(err, SS_E_NOMEM, "out of memory");
    ss_status st = builder_reserve(&b, 1) ? SS_OK : ss_fail(err, SS_E_NOMEM, "out of memory");
    int more = 1;
    for (uint64_t at = 0; st == SS_OK && more && at <= file->size && file->size - at >= LOCAL_LEN;)
        st = walk_one(file, at, &b, name, &at, &more, err);
    free(name);
    if (st != SS_OK) {
        ss_zip_listing_free(out);
        return st;
    }
    if (out->count > 0 && out->name_offsets[1] > 0) { /* names is NULL when the first name is empty */
        const char *slash = memchr(out->names, '/', out->name_offsets[1]);
        out->prefix_len = slash ? (uint32_t)(slash - out->names) + 1 : 0;
    }
    return SS_OK;
}
