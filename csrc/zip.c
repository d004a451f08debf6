/* ZIP archives as torch.save writes them: a central directory of stored (uncompressed) records
 * under one top-level folder, ZIP64 always on, sizes in data descriptors after each record.
 *
 * Everything read from the file is hostile. The central directory is copied into a malloc'd
 * buffer once (so parsing never touches the mapping and cannot fault); the few local headers are
 * read through ss_file_read, which is SIGBUS-safe. Every length and offset is bounds-checked
 * against the size measured at open time with overflow-checked arithmetic. */
#define _GNU_SOURCE /* internal.h needs sigjmp_buf, which strict C11 hides */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

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
#define MAX_COMMENT 65535u

/* Caps that no real checkpoint approaches but that keep a hostile directory from making us
 * allocate gigabytes: a 1,000-shard optimizer state has a few thousand records per file. */
#define MAX_ENTRIES (1u << 20)
#define MAX_CD_BYTES (256u << 20)

static uint16_t le16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static uint32_t le32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static uint64_t le64(const uint8_t *p) { return (uint64_t)le32(p) | ((uint64_t)le32(p + 4) << 32); }

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

/* ---- end of central directory ------------------------------------------------------------- */

typedef struct {
    uint64_t entries;
    uint64_t cd_offset;
    uint64_t cd_size;
    uint64_t cd_limit; /* the directory must end here: at the ZIP64 record or the EOCD */
} eocd_info;

/* Positions in eocd_info are relative to `base`; the archive occupies [base, base + size). */
static ss_status find_eocd(const ss_file *file, uint64_t base, uint64_t size, eocd_info *info, ss_error *err) {
    if (size < EOCD_LEN)
        return ss_fail(err, SS_E_ZIP_NO_EOCD, "%llu bytes is too small for a zip end record (truncated?)",
                       (unsigned long long)size);
    uint64_t tail_len = size < EOCD_LEN + MAX_COMMENT ? size : EOCD_LEN + MAX_COMMENT;
    uint64_t tail_start = size - tail_len;
    uint8_t *tail = malloc((size_t)tail_len);
    if (!tail) return ss_fail(err, SS_E_NOMEM, "out of memory");
    ss_status st = ss_file_read(file, base + tail_start, tail, tail_len, err);
    if (st != SS_OK) {
        free(tail);
        return st;
    }
    /* Search backwards; accept a candidate only if its comment runs exactly to the end of the
     * file, so a stray "PK\5\6" inside tensor bytes cannot be mistaken for the real record. */
    int64_t found = -1;
    for (uint64_t i = tail_len - EOCD_LEN + 1; i-- > 0;) {
        if (le32(tail + i) == SIG_EOCD && i + EOCD_LEN + le16(tail + i + 20) == tail_len) {
            found = (int64_t)i;
            break;
        }
    }
    if (found < 0) {
        free(tail);
        return ss_fail(err, SS_E_ZIP_NO_EOCD, "no zip end-of-central-directory record (truncated?)");
    }
    const uint8_t *e = tail + found;
    uint64_t eocd_pos = tail_start + (uint64_t)found;
    uint16_t disk = le16(e + 4), cd_disk = le16(e + 6), on_disk = le16(e + 8), total = le16(e + 10);
    info->entries = total;
    info->cd_size = le32(e + 12);
    info->cd_offset = le32(e + 16);
    info->cd_limit = eocd_pos;
    free(tail);
    if (disk != 0 || cd_disk != 0 || on_disk != total) {
        if (disk != 0xFFFF && cd_disk != 0xFFFF)
            return ss_fail(err, SS_E_ZIP_CORRUPT, "multi-disk zip archives are not supported");
    }

    /* A ZIP64 locator right before the EOCD overrides the 16/32-bit fields (torch always writes one). */
    if (eocd_pos >= LOCATOR64_LEN) {
        uint8_t loc[LOCATOR64_LEN];
        st = ss_file_read(file, base + eocd_pos - LOCATOR64_LEN, loc, LOCATOR64_LEN, err);
        if (st != SS_OK) return st;
        if (le32(loc) == SIG_LOCATOR64) {
            uint64_t rec_pos = le64(loc + 8), rec_end;
            if (le32(loc + 4) != 0 || le32(loc + 16) > 1)
                return ss_fail(err, SS_E_ZIP_CORRUPT, "multi-disk zip archives are not supported");
            if (!ss_add_u64(rec_pos, EOCD64_LEN, &rec_end) || rec_end > eocd_pos - LOCATOR64_LEN)
                return ss_fail(err, SS_E_ZIP_CORRUPT, "ZIP64 end record at %llu lies outside the file",
                               (unsigned long long)rec_pos);
            uint8_t r[EOCD64_LEN];
            st = ss_file_read(file, base + rec_pos, r, EOCD64_LEN, err);
            if (st != SS_OK) return st;
            if (le32(r) != SIG_EOCD64)
                return ss_fail(err, SS_E_ZIP_CORRUPT, "ZIP64 locator points at %llu, which is no ZIP64 end record",
                               (unsigned long long)rec_pos);
            if (le32(r + 16) != 0 || le32(r + 20) != 0 || le64(r + 24) != le64(r + 32))
                return ss_fail(err, SS_E_ZIP_CORRUPT, "multi-disk zip archives are not supported");
            info->entries = le64(r + 32);
            info->cd_size = le64(r + 40);
            info->cd_offset = le64(r + 48);
            info->cd_limit = rec_pos;
            return SS_OK;
        }
    }
    if (disk != 0 || cd_disk != 0 || on_disk != total)
        return ss_fail(err, SS_E_ZIP_CORRUPT, "multi-disk zip archives are not supported");
    return SS_OK;
}

/* ---- central directory -------------------------------------------------------------------- */

/* Reads the ZIP64 extra field (id 0x0001): only the fields whose 32-bit slot is saturated are
 * present, in the order uncompressed size, compressed size, local header offset. */
static int read_zip64_extra(const uint8_t *extra, uint32_t extra_len, uint64_t *usize, uint64_t *csize,
                            uint64_t *lho) {
    uint32_t pos = 0;
    while (pos + 4 <= extra_len) {
        uint16_t id = le16(extra + pos), len = le16(extra + pos + 2);
        if ((uint32_t)len > extra_len - pos - 4) return 0;
        if (id == 0x0001) {
            const uint8_t *f = extra + pos + 4;
            uint32_t used = 0;
            uint64_t *slots[3] = {usize, csize, lho};
            for (int k = 0; k < 3; k++) {
                if (*slots[k] != 0xFFFFFFFFu) continue;
                if (used + 8 > len) return 0;
                *slots[k] = le64(f + used);
                used += 8;
            }
            return 1;
        }
        pos += 4u + len;
    }
    /* No ZIP64 field: fine unless some slot needed one. */
    return *usize != 0xFFFFFFFFu && *csize != 0xFFFFFFFFu && *lho != 0xFFFFFFFFu;
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

typedef struct {
    uint64_t offset;
    uint32_t index;
} placed;

static int by_offset(const void *a, const void *b) {
    const placed *x = a, *y = b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

static ss_status check_layout(ss_zip_listing *o, uint64_t cd_offset, ss_error *err) {
    if (o->count == 0) return SS_OK;
    named *names = malloc((size_t)o->count * sizeof *names);
    placed *order = malloc((size_t)o->count * sizeof *order);
    if (!names || !order) {
        free(names);
        free(order);
        return ss_fail(err, SS_E_NOMEM, "out of memory");
    }
    char a[96], b[96];
    ss_status st = SS_OK;
    for (uint32_t i = 0; i < o->count; i++) {
        names[i] = (named){o->names + o->name_offsets[i], o->name_offsets[i + 1] - o->name_offsets[i], i};
        order[i] = (placed){o->header_offsets[i], i};
    }
    qsort(names, o->count, sizeof *names, by_name);
    for (uint32_t k = 1; k < o->count && st == SS_OK; k++) {
        if (by_name(&names[k - 1], &names[k]) == 0) {
            ss_quote_name(a, sizeof a, names[k].name, names[k].len);
            st = ss_fail(err, SS_E_ZIP_DUPLICATE, "zip entry '%s' appears twice", a);
        }
    }
    free(names);
    qsort(order, o->count, sizeof *order, by_offset);

    /* Sorted by local header: each record [header, data end) must end before the next begins,
     * and the last before the central directory. */
    for (uint32_t k = 0; k < o->count && st == SS_OK; k++) {
        uint32_t i = order[k].index;
        uint64_t end = o->data_offsets[i] + o->sizes[i]; /* checked when the entry was added */
        uint64_t next = k + 1 < o->count ? order[k + 1].offset : cd_offset;
        if (end > next) {
            ss_quote_name(a, sizeof a, o->names + o->name_offsets[i], o->name_offsets[i + 1] - o->name_offsets[i]);
            if (k + 1 < o->count) {
                uint32_t j = order[k + 1].index;
                ss_quote_name(b, sizeof b, o->names + o->name_offsets[j], o->name_offsets[j + 1] - o->name_offsets[j]);
                st = ss_fail(err, SS_E_ZIP_OVERLAP, "record '%s' (ends at %llu) overlaps record '%s' (starts at %llu)",
                             a, (unsigned long long)end, b, (unsigned long long)next);
            } else {
                st = ss_fail(err, SS_E_ZIP_OVERLAP, "record '%s' (ends at %llu) overlaps the central directory at %llu",
                             a, (unsigned long long)end, (unsigned long long)next);
            }
        }
    }
    free(order);
    return st;
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
    /* From here on every position is relative to base and bounded by `size`. */
    const uint64_t size = length;
    eocd_info info = {0, 0, 0, 0};
    ss_status st = find_eocd(file, base, size, &info, err);
    if (st != SS_OK) return st;

    uint64_t cd_end;
    if (!ss_add_u64(info.cd_offset, info.cd_size, &cd_end) || cd_end > info.cd_limit)
        return ss_fail(err, SS_E_ZIP_CORRUPT, "central directory %llu+%llu does not end before the end record at %llu",
                       (unsigned long long)info.cd_offset, (unsigned long long)info.cd_size,
                       (unsigned long long)info.cd_limit);
    if (info.entries > MAX_ENTRIES || info.cd_size > MAX_CD_BYTES)
        return ss_fail(err, SS_E_ZIP_TOO_MANY, "%llu entries in a %llu-byte directory (limit %u entries)",
                       (unsigned long long)info.entries, (unsigned long long)info.cd_size, MAX_ENTRIES);
    if (info.entries * CENTRAL_LEN > info.cd_size)
        return ss_fail(err, SS_E_ZIP_CORRUPT, "%llu entries cannot fit in a %llu-byte central directory",
                       (unsigned long long)info.entries, (unsigned long long)info.cd_size);

    uint8_t *cd = malloc(info.cd_size ? (size_t)info.cd_size : 1);
    if (!cd) return ss_fail(err, SS_E_NOMEM, "out of memory");
    st = ss_file_read(file, base + info.cd_offset, cd, info.cd_size, err);
    if (st != SS_OK) {
        free(cd);
        return st;
    }

    builder b = {out, 0, 0, 0};
    uint64_t pos = 0;
    uint32_t prefix_len = 0;
    const char *first_name = NULL;
    char qname[96];
    for (uint64_t n = 0; n < info.entries; n++) {
        if (info.cd_size - pos < CENTRAL_LEN || le32(cd + pos) != SIG_CENTRAL) {
            st = ss_fail(err, SS_E_ZIP_CORRUPT, "central directory entry %llu of %llu is missing or damaged",
                         (unsigned long long)n, (unsigned long long)info.entries);
            goto fail;
        }
        const uint8_t *h = cd + pos;
        uint16_t flags = le16(h + 8), method = le16(h + 10);
        uint32_t crc = le32(h + 16);
        uint64_t csize = le32(h + 20), usize = le32(h + 24);
        uint32_t name_len = le16(h + 28), extra_len = le16(h + 30), comment_len = le16(h + 32);
        uint64_t lho = le32(h + 42);
        uint64_t var_len = (uint64_t)name_len + extra_len + comment_len;
        if (info.cd_size - pos - CENTRAL_LEN < var_len) {
            st = ss_fail(err, SS_E_ZIP_CORRUPT, "central directory entry %llu runs past the directory",
                         (unsigned long long)n);
            goto fail;
        }
        const char *name = (const char *)h + CENTRAL_LEN;
        const uint8_t *extra = h + CENTRAL_LEN + name_len;
        ss_quote_name(qname, sizeof qname, name, name_len);
        if (name_len == 0 || memchr(name, 0, name_len)) {
            st = ss_fail(err, SS_E_ZIP_CORRUPT, "central directory entry %llu has an empty or NUL-bearing name",
                         (unsigned long long)n);
            goto fail;
        }
        if (!read_zip64_extra(extra, extra_len, &usize, &csize, &lho)) {
            st = ss_fail(err, SS_E_ZIP_CORRUPT, "record '%s' has a damaged ZIP64 extra field", qname);
            goto fail;
        }
        if (flags & 0x0001) {
            st = ss_fail(err, SS_E_ZIP_ENCRYPTED, "record '%s' is encrypted", qname);
            goto fail;
        }
        if (method != 0) {
            st = ss_fail(err, SS_E_ZIP_COMPRESSED, "record '%s' is compressed (method %u); torch writes stored records", qname, method);
            goto fail;
        }
        if (csize != usize) {
            st = ss_fail(err, SS_E_ZIP_CORRUPT, "stored record '%s' has compressed size %llu != size %llu", qname,
                         (unsigned long long)csize, (unsigned long long)usize);
            goto fail;
        }
        /* One top-level folder: the first entry's text up to its first '/' fixes it. */
        const char *slash = memchr(name, '/', name_len);
        if (n == 0) {
            if (!slash || slash == name) {
                st = ss_fail(err, SS_E_ZIP_PREFIX, "first entry '%s' is not inside a top-level folder", qname);
                goto fail;
            }
            prefix_len = (uint32_t)(slash - name) + 1;
            out->prefix_len = prefix_len;
        }
        if (n == 0) first_name = name;
        if (name_len <= prefix_len || memcmp(name, first_name, prefix_len) != 0) {
            char qprefix[96];
            ss_quote_name(qprefix, sizeof qprefix, first_name, prefix_len - 1);
            st = ss_fail(err, SS_E_ZIP_PREFIX, "entry '%s' is outside the archive's top-level folder '%s'",
                         qname, qprefix);
            goto fail;
        }

        /* The data starts after the *local* header's own name and extra field, which differ
         * from the central copy (torch pads the local extra field to align tensors). */
        uint8_t lh[LOCAL_LEN];
        uint64_t lh_end;
        if (!ss_add_u64(lho, LOCAL_LEN, &lh_end) || lh_end > size) {
            st = ss_fail(err, SS_E_ZIP_PAST_EOF, "record '%s' has its header at %llu, past the end of the %llu-byte archive",
                         qname, (unsigned long long)lho, (unsigned long long)size);
            goto fail;
        }
        st = ss_file_read(file, base + lho, lh, LOCAL_LEN, err);
        if (st != SS_OK) goto fail;
        uint32_t lname_len = le16(lh + 26), lextra_len = le16(lh + 28);
        if (le32(lh) != SIG_LOCAL || lname_len != name_len || le16(lh + 8) != method) {
            st = ss_fail(err, SS_E_ZIP_LOCAL_HEADER, "record '%s': no matching local header at %llu", qname,
                         (unsigned long long)lho);
            goto fail;
        }
        uint64_t data, data_end;
        if (!ss_add_u64(lh_end, (uint64_t)lname_len + lextra_len, &data) || !ss_add_u64(data, usize, &data_end) ||
            data_end > size) {
            st = ss_fail(err, SS_E_ZIP_PAST_EOF, "record '%s' (%llu bytes) runs past the end of the %llu-byte archive",
                         qname, (unsigned long long)usize, (unsigned long long)size);
            goto fail;
        }
        char *lname = malloc(name_len);
        if (!lname) {
            st = ss_fail(err, SS_E_NOMEM, "out of memory");
            goto fail;
        }
        st = ss_file_read(file, base + lh_end, lname, name_len, err);
        int same = st == SS_OK && memcmp(lname, name, name_len) == 0;
        free(lname);
        if (st != SS_OK) goto fail;
        if (!same) {
            st = ss_fail(err, SS_E_ZIP_LOCAL_HEADER, "record '%s': local header at %llu names another file", qname,
                         (unsigned long long)lho);
            goto fail;
        }
        /* Without a data descriptor the local header carries the CRC and sizes: they must agree. */
        if (!(le16(lh + 6) & 0x0008)) {
            uint64_t lc = le32(lh + 18), lu = le32(lh + 22);
            if (le32(lh + 14) != crc || (lc != 0xFFFFFFFFu && lc != csize) || (lu != 0xFFFFFFFFu && lu != usize)) {
                st = ss_fail(err, SS_E_ZIP_LOCAL_HEADER, "record '%s': local header disagrees with the central directory",
                             qname);
                goto fail;
            }
        }
        if (!builder_add(&b, name, name_len, base + lho, base + data, usize, crc, 1)) {
            st = ss_fail(err, SS_E_NOMEM, "out of memory");
            goto fail;
        }
        pos += CENTRAL_LEN + var_len;
    }
    free(cd);
    cd = NULL;
    st = check_layout(out, base + info.cd_offset, err);
    if (st != SS_OK) goto fail;
    if (out->count == 0 && !builder_reserve(&b, 1)) {
        st = ss_fail(err, SS_E_NOMEM, "out of memory");
        goto fail;
    }
    return SS_OK;
fail:
    free(cd);
    ss_zip_listing_free(out);
    return st;
}

/* ---- forensics: walk local headers when there is no central directory ------------------- */

/* Searches [from, limit) for a data descriptor whose size field equals its distance from
 * `data`: the signature alone could occur inside tensor bytes, the matching size cannot
 * plausibly. Returns 1 and fills size/crc/desc_len when found. */
static int find_descriptor(const ss_file *file, uint64_t data, uint64_t *size, uint32_t *crc, uint32_t *desc_len,
                           ss_status *st, ss_error *err) {
    enum { CHUNK = 1 << 20, OVERLAP = 24 };
    uint8_t *buf = malloc(CHUNK + OVERLAP);
    if (!buf) {
        *st = ss_fail(err, SS_E_NOMEM, "out of memory");
        return 0;
    }
    uint64_t at = data;
    while (at < file->size) {
        uint64_t len = file->size - at < CHUNK + OVERLAP ? file->size - at : CHUNK + OVERLAP;
        *st = ss_file_read(file, at, buf, len, err);
        if (*st != SS_OK) break;
        for (uint64_t i = 0; i + 16 <= len; i++) {
            if (buf[i] != 'P' || le32(buf + i) != SIG_DESCRIPTOR) continue;
            uint64_t dist = at + i - data;
            if (le32(buf + i + 8) == dist && le32(buf + i + 12) == dist && dist < 0xFFFFFFFFu) {
                *size = dist, *crc = le32(buf + i + 4), *desc_len = 16;
                free(buf);
                return 1;
            }
            if (i + 24 <= len && le64(buf + i + 8) == dist && le64(buf + i + 16) == dist) {
                *size = dist, *crc = le32(buf + i + 4), *desc_len = 24;
                free(buf);
                return 1;
            }
        }
        if (len < CHUNK + OVERLAP) break;
        at += CHUNK;
    }
    free(buf);
    return 0;
}

ss_status ss_zip_walk_local(const ss_file *file, ss_zip_listing *out, ss_error *err) {
    memset(out, 0, sizeof *out);
    builder b = {out, 0, 0, 0};
    ss_status st = SS_OK;
    uint64_t at = 0;
    char *name = malloc(65536);
    if (!name) return ss_fail(err, SS_E_NOMEM, "out of memory");
    if (!builder_reserve(&b, 1)) {
        st = ss_fail(err, SS_E_NOMEM, "out of memory");
        goto done;
    }
    while (at <= file->size && file->size - at >= LOCAL_LEN) {
        uint8_t lh[LOCAL_LEN];
        st = ss_file_read(file, at, lh, LOCAL_LEN, err);
        if (st != SS_OK) goto done;
        if (le32(lh) != SIG_LOCAL) break; /* the central directory, or garbage: the walk ends */
        if (out->count >= MAX_ENTRIES) {
            st = ss_fail(err, SS_E_ZIP_TOO_MANY, "more than %u local headers", MAX_ENTRIES);
            goto done;
        }
        uint16_t flags = le16(lh + 6);
        uint32_t name_len = le16(lh + 26), extra_len = le16(lh + 28);
        uint64_t data = at + LOCAL_LEN + name_len + extra_len; /* < 2^64: at <= size, small adds */
        if (data > file->size) break; /* header cut short: nothing of this record survived */
        st = ss_file_read(file, at + LOCAL_LEN, name, name_len, err);
        if (st != SS_OK) goto done;
        uint64_t size = 0, next = 0;
        uint32_t crc = le32(lh + 14), desc_len = 0;
        uint8_t intact;
        if (!(flags & 0x0008) && le32(lh + 18) != 0xFFFFFFFFu) {
            size = le32(lh + 18);
            intact = size <= file->size - data;
            next = intact ? data + size : file->size;
        } else if (find_descriptor(file, data, &size, &crc, &desc_len, &st, err)) {
            intact = 1;
            next = data + size + desc_len;
        } else {
            if (st != SS_OK) goto done;
            intact = 0;
            crc = 0;
        }
        if (!intact) size = file->size - data; /* what survived of it */
        if (!builder_add(&b, name, name_len, at, data, size, crc, intact)) {
            st = ss_fail(err, SS_E_NOMEM, "out of memory");
            goto done;
        }
        if (!intact) break;
        at = next;
    }
    if (out->count > 0 && out->name_offsets[1] > 0) { /* names is NULL when the first name is empty */
        const char *slash = memchr(out->names, '/', out->name_offsets[1]);
        out->prefix_len = slash ? (uint32_t)(slash - out->names) + 1 : 0;
    }
done:
    free(name);
    if (st != SS_OK) ss_zip_listing_free(out);
    return st;
}
