/* safetensors: header parsing and validation, rule for rule as the reference implementation
 * (safetensors 0.8), each violation with its own status:
 *   8-byte little-endian N; N <= 100,000,000; 8 + N <= file size; header UTF-8, a JSON
 *   object (whitespace before it is allowed, as serde allows it); optional __metadata__ of string -> string; every other member a tensor
 *   {dtype, shape, data_offsets}; sorted by offsets the tensors start at 0 and follow each other
 *   with no gap or overlap; numel overflow-checked; numel * bits a whole number of bytes equal
 *   to end - begin; the last end covers the file exactly.
 * Beyond the reference: duplicate names are rejected (serde would silently keep one). */
#define _GNU_SOURCE /* internal.h needs POSIX's sigjmp_buf, which strict -std=c11 hides */
#include <stdlib.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include "internal.h"
#include "name_set.h"

#define MAX_HEADER 100000000ull
#define MAX_DEPTH 128 /* serde_json's recursion limit */

static const struct {
    const char *st_name, *name;
    uint32_t bits;
    size_t st_len;
} DTYPES[SS_DTYPE_COUNT] = {
#define SS_DTYPE_ROW(id, st, torch, nbits) [id] = {st, torch, nbits, sizeof st - 1},
    SS_DTYPE_LIST(SS_DTYPE_ROW)
#undef SS_DTYPE_ROW
};

const char *ss_dtype_name(uint32_t dtype) { return dtype < SS_DTYPE_COUNT ? DTYPES[dtype].name : NULL; }
const char *ss_dtype_st_name(uint32_t dtype) { return dtype < SS_DTYPE_COUNT ? DTYPES[dtype].st_name : NULL; }
uint32_t ss_dtype_bits(uint32_t dtype) { return dtype < SS_DTYPE_COUNT ? DTYPES[dtype].bits : 0; }

/* ---- growable arrays --------------------------------------------------------------------- */

typedef struct {
    void *data;
    size_t len, cap, item;
} vec;

static int vec_reserve(vec *v, size_t extra) {
    if (v->len + extra <= v->cap) return 1;
    size_t cap = v->cap ? v->cap : 64;
    while (cap < v->len + extra) cap *= 2;
    void *grown = realloc(v->data, cap * v->item);
    if (!grown) return 0;
    v->data = grown;
    v->cap = cap;
    return 1;
}

static int vec_push(vec *v, const void *item) {
    if (!vec_reserve(v, 1)) return 0;
    memcpy((char *)v->data + v->len * v->item, item, v->item);
    v->len++;
    return 1;
}

/* ---- the parser ---------------------------------------------------------------------------- */

typedef struct {
    uint32_t key_start, key_len;
    uint32_t dims_start, ndims;
    uint64_t begin, end;
    uint8_t dtype;
} entry;

typedef struct {
    const char *begin, *p, *end;
    ss_error *err;
    vec text;    /* char: unescaped tensor names, then metadata strings */
    vec entries; /* entry */
    vec dims;    /* int64_t */
    vec meta;    /* uint32_t pairs (start, len) into text, key then value */
    int seen_metadata;
} parser;

static ss_status json_error(parser *ps, const char *what) {
    return ss_fail(ps->err, SS_E_ST_JSON, "header is not valid JSON: %s at header byte %lld", what,
                   (long long)(ps->p - ps->begin));
}

static void skip_ws(parser *ps) {
    while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r')) ps->p++;
}

static int hex4(const char *s, uint32_t *out) {
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        char c = s[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (uint32_t)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (uint32_t)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (uint32_t)(c - 'A' + 10);
        else return 0;
    }
    *out = v;
    return 1;
}

static int put_utf8(vec *text, uint32_t cp) {
    char b[4];
    size_t n;
    if (cp < 0x80) b[0] = (char)cp, n = 1;
    else if (cp < 0x800) b[0] = (char)(0xC0 | (cp >> 6)), b[1] = (char)(0x80 | (cp & 0x3F)), n = 2;
    else if (cp < 0x10000)
        b[0] = (char)(0xE0 | (cp >> 12)), b[1] = (char)(0x80 | ((cp >> 6) & 0x3F)), b[2] = (char)(0x80 | (cp & 0x3F)), n = 3;
    else
        b[0] = (char)(0xF0 | (cp >> 18)), b[1] = (char)(0x80 | ((cp >> 12) & 0x3F)),
        b[2] = (char)(0x80 | ((cp >> 6) & 0x3F)), b[3] = (char)(0x80 | (cp & 0x3F)), n = 4;
    if (!vec_reserve(text, n)) return 0;
    memcpy((char *)text->data + text->len, b, n);
    text->len += n;
    return 1;
}

/* The first byte at or after p that ends a run of plain string bytes: '"', '\\' or a control
 * character; `end` if none. Names are tens of bytes and a header holds up to a million: where
 * SSE2 is there (every x86-64), 16 bytes are looked at a time. */
static const char *plain_run_end(const char *p, const char *end) {
#ifdef __SSE2__
    const __m128i quote = _mm_set1_epi8('"'), backslash = _mm_set1_epi8('\\'), control = _mm_set1_epi8(0x1F);
    for (; end - p >= 16; p += 16) {
        __m128i x = _mm_loadu_si128((const __m128i *)p);
        __m128i stop = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(x, quote), _mm_cmpeq_epi8(x, backslash)),
                                    _mm_cmpeq_epi8(_mm_max_epu8(x, control), control)); /* max(x, 0x1F) == 0x1F: x < 0x20 */
        unsigned mask = (unsigned)_mm_movemask_epi8(stop);
        if (mask) return p + __builtin_ctz(mask);
    }
#endif
    while (p < end && *p != '"' && *p != '\\' && (unsigned char)*p >= 0x20) p++;
    return p;
}

/* Parses a JSON string at ps->p (which must be '"'). With `text` set, appends the unescaped
 * bytes there; otherwise only validates. UTF-8 validity of raw bytes was checked up front. */
static ss_status parse_string(parser *ps, vec *text) {
    if (ps->p >= ps->end || *ps->p != '"') return json_error(ps, "expected a string");
    ps->p++;
    for (;;) {
        const char *run = ps->p;
        ps->p = plain_run_end(ps->p, ps->end);
        if (text && ps->p > run) {
            size_t n = (size_t)(ps->p - run);
            if (!vec_reserve(text, n)) return ss_fail(ps->err, SS_E_NOMEM, "out of memory");
            memcpy((char *)text->data + text->len, run, n);
            text->len += n;
        }
        if (ps->p >= ps->end) return json_error(ps, "unterminated string");
        char c = *ps->p++;
        if (c == '"') return SS_OK;
        if (c != '\\') return json_error(ps, "control character in string");
        if (ps->p >= ps->end) return json_error(ps, "unterminated escape");
        char e = *ps->p++;
        uint32_t cp;
        switch (e) {
        case '"': cp = '"'; break;
        case '\\': cp = '\\'; break;
        case '/': cp = '/'; break;
        case 'b': cp = '\b'; break;
        case 'f': cp = '\f'; break;
        case 'n': cp = '\n'; break;
        case 'r': cp = '\r'; break;
        case 't': cp = '\t'; break;
        case 'u':
            if (ps->end - ps->p < 4 || !hex4(ps->p, &cp)) return json_error(ps, "bad \\u escape");
            ps->p += 4;
            if (cp >= 0xDC00 && cp <= 0xDFFF) return json_error(ps, "lone low surrogate");
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                uint32_t low;
                if (ps->end - ps->p < 6 || ps->p[0] != '\\' || ps->p[1] != 'u' || !hex4(ps->p + 2, &low) ||
                    low < 0xDC00 || low > 0xDFFF)
                    return json_error(ps, "lone high surrogate");
                ps->p += 6;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
            }
            break;
        default: return json_error(ps, "bad escape");
        }
        if (text && !put_utf8(text, cp)) return ss_fail(ps->err, SS_E_NOMEM, "out of memory");
    }
}

/* Any JSON number, validated and skipped (for members we ignore). */
static ss_status skip_number(parser *ps) {
    const char *p = ps->p;
    if (p < ps->end && *p == '-') p++;
    if (p >= ps->end) return json_error(ps, "bad number");
    if (*p == '0') p++;
    else if (*p >= '1' && *p <= '9') while (p < ps->end && *p >= '0' && *p <= '9') p++;
    else return json_error(ps, "bad number");
    if (p < ps->end && *p == '.') {
        p++;
        if (p >= ps->end || *p < '0' || *p > '9') return json_error(ps, "bad number");
        while (p < ps->end && *p >= '0' && *p <= '9') p++;
    }
    if (p < ps->end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < ps->end && (*p == '+' || *p == '-')) p++;
        if (p >= ps->end || *p < '0' || *p > '9') return json_error(ps, "bad number");
        while (p < ps->end && *p >= '0' && *p <= '9') p++;
    }
    ps->p = p;
    return SS_OK;
}

static ss_status skip_value(parser *ps, int depth);

static int literal(parser *ps, const char *word) {
    size_t n = strlen(word);
    if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, word, n) != 0) return 0;
    ps->p += n;
    return 1;
}

static ss_status skip_container(parser *ps, int depth, char close) {
    int object = close == '}';
    ps->p++;
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == close) return ps->p++, SS_OK;
    for (;;) {
        ss_status s;
        if (object) {
            if ((s = parse_string(ps, NULL))) return s;
            skip_ws(ps);
            if (ps->p >= ps->end || *ps->p != ':') return json_error(ps, "expected ':'");
            ps->p++;
        }
        if ((s = skip_value(ps, depth + 1))) return s;
        skip_ws(ps);
        if (ps->p < ps->end && *ps->p == ',') {
            ps->p++;
            skip_ws(ps);
            continue;
        }
        if (ps->p < ps->end && *ps->p == close) return ps->p++, SS_OK;
        return json_error(ps, object ? "expected ',' or '}'" : "expected ',' or ']'");
    }
}

static ss_status skip_value(parser *ps, int depth) {
    if (depth > MAX_DEPTH) return ss_fail(ps->err, SS_E_ST_TOO_DEEP, "header JSON nests deeper than %d", MAX_DEPTH);
    skip_ws(ps);
    if (ps->p >= ps->end) return json_error(ps, "unexpected end");
    switch (*ps->p) {
    case '"': return parse_string(ps, NULL);
    case '{': return skip_container(ps, depth, '}');
    case '[': return skip_container(ps, depth, ']');
    case 't': return literal(ps, "true") ? SS_OK : json_error(ps, "bad literal");
    case 'f': return literal(ps, "false") ? SS_OK : json_error(ps, "bad literal");
    case 'n': return literal(ps, "null") ? SS_OK : json_error(ps, "bad literal");
    default: return skip_number(ps);
    }
}

/* A non-negative integer that fits in uint64 (serde's usize); 0 if the value is any other
 * valid JSON value (the caller reports its own error), -1 with err set if invalid JSON. */
static int parse_uint(parser *ps, uint64_t *out, ss_status *status) {
    skip_ws(ps);
    const char *start = ps->p;
    uint64_t v = 0;
    int digits = 0, overflow = 0;
    while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') {
        if (!ss_mul_u64(v, 10, &v) || !ss_add_u64(v, (uint64_t)(*ps->p - '0'), &v)) overflow = 1;
        ps->p++;
        digits++;
    }
    int leading_zero = digits > 1 && *start == '0';
    if (leading_zero) { /* "02" is not JSON at all: say so, not "shape is not a list of integers" */
        ps->p = start;
        *status = json_error(ps, "number with a leading zero");
        return -1;
    }
    int more = ps->p < ps->end && (*ps->p == '.' || *ps->p == 'e' || *ps->p == 'E');
    if (digits && !overflow && !more) {
        *out = v;
        return 1;
    }
    ps->p = start;
    *status = skip_value(ps, 1);
    return *status ? -1 : 0;
}

/* Whether text[start..] is the string literal `word` (its length known at compile time). */
#define key_is(text, start, word) key_is_n(text, start, word, sizeof(word) - 1)
static int key_is_n(const vec *text, size_t start, const char *word, size_t n) {
    const char *at = (char *)text->data + start;
    return text->len - start == n && *at == *word && memcmp(at, word, n) == 0;
}

static const char *tensor_label(parser *ps, const entry *e, char *buf, size_t cap) {
    ss_quote_name(buf, cap, (char *)ps->text.data + e->key_start, e->key_len);
    return buf;
}

static ss_status parse_tensor(parser *ps, entry *e) {
    char label_buf[160]; /* the quoted name, made only for an error message */
#define LABEL tensor_label(ps, e, label_buf, sizeof label_buf)
    skip_ws(ps);
    if (ps->p >= ps->end || *ps->p != '{') {
        ss_status s = skip_value(ps, 1);
        return s ? s : ss_fail(ps->err, SS_E_ST_TENSOR_ENTRY, "tensor '%s': entry is not an object", LABEL);
    }
    ps->p++;
    int have_dtype = 0, have_shape = 0, have_offsets = 0;
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == '}') ps->p++;
    else for (;;) {
        ss_status s;
        size_t mark = ps->text.len; /* field names go to the scratch end of text, then dropped */
        if ((s = parse_string(ps, &ps->text))) return s;
        int is_dtype = key_is(&ps->text, mark, "dtype"), is_shape = key_is(&ps->text, mark, "shape"),
            is_offsets = key_is(&ps->text, mark, "data_offsets");
        ps->text.len = mark;
        skip_ws(ps);
        if (ps->p >= ps->end || *ps->p != ':') return json_error(ps, "expected ':'");
        ps->p++;
        skip_ws(ps);
        if ((is_dtype && have_dtype) || (is_shape && have_shape) || (is_offsets && have_offsets))
            return ss_fail(ps->err, SS_E_ST_TENSOR_ENTRY, "tensor '%s': field given twice", LABEL);
        if (is_dtype) {
            have_dtype = 1;
            if (ps->p >= ps->end || *ps->p != '"') {
                if ((s = skip_value(ps, 1))) return s;
                return ss_fail(ps->err, SS_E_ST_DTYPE, "tensor '%s': dtype is not a string", LABEL);
            }
            size_t at = ps->text.len;
            if ((s = parse_string(ps, &ps->text))) return s;
            size_t n = ps->text.len - at;
            const char *name = (char *)ps->text.data + at;
            int found = -1;
            for (int d = 0; d < SS_DTYPE_COUNT; d++)
                if (DTYPES[d].st_len == n && memcmp(DTYPES[d].st_name, name, n) == 0) {
                    found = d;
                    break;
                }
            if (found < 0) {
                char shown[64];
                ss_quote_name(shown, sizeof shown, name, n);
                ps->text.len = at;
                return ss_fail(ps->err, SS_E_ST_DTYPE, "tensor '%s': unknown dtype '%s'", LABEL, shown);
            }
            ps->text.len = at;
            e->dtype = (uint8_t)found;
        } else if (is_shape || is_offsets) {
            ss_status bad = is_shape ? SS_E_ST_SHAPE : SS_E_ST_OFFSETS;
            const char *what = is_shape ? "shape is not a list of non-negative integers"
                                        : "data_offsets is not a list of two non-negative integers";
            if (ps->p >= ps->end || *ps->p != '[') {
                if ((s = skip_value(ps, 1))) return s;
                return ss_fail(ps->err, bad, "tensor '%s': %s", LABEL, what);
            }
            ps->p++;
            uint64_t values[2] = {0, 0};
            size_t count = 0;
            if (is_shape) e->dims_start = (uint32_t)ps->dims.len;
            skip_ws(ps);
            if (ps->p < ps->end && *ps->p == ']') ps->p++;
            else for (;;) {
                uint64_t v;
                int r = parse_uint(ps, &v, &s);
                if (r < 0) return s;
                if (r == 0 || (is_shape && v > INT64_MAX)) return ss_fail(ps->err, bad, "tensor '%s': %s", LABEL, what);
                if (is_shape) {
                    int64_t d = (int64_t)v;
                    if (!vec_push(&ps->dims, &d)) return ss_fail(ps->err, SS_E_NOMEM, "out of memory");
                } else if (count < 2) {
                    values[count] = v;
                }
                count++;
                skip_ws(ps);
                if (ps->p < ps->end && *ps->p == ',') { ps->p++; continue; }
                if (ps->p < ps->end && *ps->p == ']') { ps->p++; break; }
                return json_error(ps, "expected ',' or ']'");
            }
            if (is_shape) {
                have_shape = 1;
                e->ndims = (uint32_t)count;
            } else {
                have_offsets = 1;
                if (count != 2) return ss_fail(ps->err, bad, "tensor '%s': %s", LABEL, what);
                e->begin = values[0];
                e->end = values[1];
            }
        } else if ((s = skip_value(ps, 1))) {
            return s; /* the reference ignores unknown fields; so do we, after validating them */
        }
        skip_ws(ps);
        if (ps->p < ps->end && *ps->p == ',') { ps->p++; skip_ws(ps); continue; }
        if (ps->p < ps->end && *ps->p == '}') { ps->p++; break; }
        return json_error(ps, "expected ',' or '}'");
    }
    if (!have_dtype || !have_shape || !have_offsets)
        return ss_fail(ps->err, SS_E_ST_TENSOR_ENTRY, "tensor '%s': missing %s", LABEL,
                       !have_dtype ? "dtype" : !have_shape ? "shape" : "data_offsets");
    return SS_OK;
#undef LABEL
}

static ss_status parse_metadata(parser *ps) {
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == 'n' && literal(ps, "null")) return SS_OK; /* Option<...> = None */
    if (ps->p >= ps->end || *ps->p != '{') {
        ss_status s = skip_value(ps, 1);
        return s ? s : ss_fail(ps->err, SS_E_ST_METADATA, "__metadata__ is not an object of strings");
    }
    ps->p++;
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == '}') return ps->p++, SS_OK;
    for (;;) {
        ss_status s;
        for (int half = 0; half < 2; half++) {
            uint32_t start = (uint32_t)ps->text.len;
            if (half == 1) {
                skip_ws(ps);
                if (ps->p >= ps->end || *ps->p != ':') return json_error(ps, "expected ':'");
                ps->p++;
                skip_ws(ps);
                if (ps->p >= ps->end || *ps->p != '"') {
                    if ((s = skip_value(ps, 1))) return s;
                    return ss_fail(ps->err, SS_E_ST_METADATA, "__metadata__ value is not a string");
                }
                start = (uint32_t)ps->text.len;
            }
            if ((s = parse_string(ps, &ps->text))) return s;
            uint32_t pair[2] = {start, (uint32_t)(ps->text.len - start)};
            if (!vec_push(&ps->meta, pair)) return ss_fail(ps->err, SS_E_NOMEM, "out of memory");
        }
        skip_ws(ps);
        if (ps->p < ps->end && *ps->p == ',') { ps->p++; skip_ws(ps); continue; }
        if (ps->p < ps->end && *ps->p == '}') return ps->p++, SS_OK;
        return json_error(ps, "expected ',' or '}'");
    }
}

/* Sort entries by (begin, end), as the reference does before validating. */
static int by_offsets(const void *a, const void *b) {
    const entry *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

/* Whether the entries are already in offset order: writers emit them so, and the check is
 * one pass where the sort is n log n. */
static int sorted_by_offsets(const parser *ps) {
    const entry *es = ps->entries.data;
    for (size_t i = 1; i < ps->entries.len; i++)
        if (by_offsets(&es[i - 1], &es[i]) > 0) return 0;
    return 1;
}

/* A name given twice, found through a set of names: linear in the number of tensors, which
 * reach a million in one header. */
static ss_status check_duplicates(parser *ps) {
    size_t n = ps->entries.len;
    if (n < 2) return SS_OK;
    span *spans = malloc(n * sizeof *spans);
    name_set set = {0};
    if (!spans || !name_set_init(&set, n)) {
        free(spans);
        return ss_fail(ps->err, SS_E_NOMEM, "out of memory");
    }
    const entry *es = ps->entries.data;
    const char *text = ps->text.data;
    ss_status s = SS_OK;
    for (uint32_t i = 0; i < n && !s; i++) {
        spans[i] = (span){es[i].key_start, es[i].key_len};
        uint64_t tag;
        uint64_t *slot = name_slot(&set, text, spans, text + spans[i].start, spans[i].len, &tag);
        if (*slot) {
            char label[160];
            ss_quote_name(label, sizeof label, text + spans[i].start, spans[i].len);
            s = ss_fail(ps->err, SS_E_ST_DUPLICATE, "tensor '%s' appears twice in the header", label);
        }
        name_put(slot, tag, i);
    }
    free(spans);
    free(set.slots);
    return s;
}

static ss_status parse_header(parser *ps) {
    ss_status s;
    skip_ws(ps); /* safetensors 0.8 lets serde skip whitespace before the object */
    if (ps->p >= ps->end || *ps->p != '{')
        return ss_fail(ps->err, SS_E_ST_NOT_OBJECT, "header does not start with '{'");
    ps->p++;
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == '}') ps->p++;
    else for (;;) {
        entry e;
        memset(&e, 0, sizeof e);
        e.key_start = (uint32_t)ps->text.len;
        if ((s = parse_string(ps, &ps->text))) return s;
        e.key_len = (uint32_t)(ps->text.len - e.key_start);
        skip_ws(ps);
        if (ps->p >= ps->end || *ps->p != ':') return json_error(ps, "expected ':'");
        ps->p++;
        if (key_is(&ps->text, e.key_start, "__metadata__")) {
            ps->text.len = e.key_start;
            if (ps->seen_metadata)
                return ss_fail(ps->err, SS_E_ST_DUPLICATE, "__metadata__ appears twice in the header");
            ps->seen_metadata = 1;
            if ((s = parse_metadata(ps))) return s;
        } else {
            if ((s = parse_tensor(ps, &e))) return s;
            if (!vec_push(&ps->entries, &e)) return ss_fail(ps->err, SS_E_NOMEM, "out of memory");
        }
        skip_ws(ps);
        if (ps->p < ps->end && *ps->p == ',') { ps->p++; skip_ws(ps); continue; }
        if (ps->p < ps->end && *ps->p == '}') { ps->p++; break; }
        return json_error(ps, "expected ',' or '}'");
    }
    skip_ws(ps);
    if (ps->p != ps->end) return json_error(ps, "trailing characters after the object");
    return check_duplicates(ps);
}

/* Validates the sorted entries; returns the end of the data (relative to the data start). */
static ss_status validate(parser *ps, uint64_t *data_len) {
    uint64_t start = 0;
    const entry *es = ps->entries.data;
    const int64_t *dims = ps->dims.data;
    char label[160];
    for (size_t i = 0; i < ps->entries.len; i++) {
        const entry *e = &es[i];
        if (e->begin != start) {
            tensor_label(ps, e, label, sizeof label);
            return ss_fail(ps->err, SS_E_ST_GAP, "tensor '%s' starts at data byte %llu, but the previous tensor ends at %llu (%s)",
                           label, (unsigned long long)e->begin, (unsigned long long)start, e->begin < start ? "overlap" : "gap");
        }
        if (e->end < e->begin) {
            tensor_label(ps, e, label, sizeof label);
            return ss_fail(ps->err, SS_E_ST_OFFSETS, "tensor '%s': data_offsets end %llu is before begin %llu", label,
                           (unsigned long long)e->end, (unsigned long long)e->begin);
        }
        start = e->end;
        uint64_t numel = 1, nbits;
        for (uint32_t d = 0; d < e->ndims; d++)
            if (!ss_mul_u64(numel, (uint64_t)dims[e->dims_start + d], &numel)) {
                tensor_label(ps, e, label, sizeof label);
                return ss_fail(ps->err, SS_E_ST_NUMEL_OVERFLOW, "tensor '%s': number of elements overflows 64 bits", label);
            }
        if (!ss_mul_u64(numel, DTYPES[e->dtype].bits, &nbits)) {
            tensor_label(ps, e, label, sizeof label);
            return ss_fail(ps->err, SS_E_ST_NUMEL_OVERFLOW, "tensor '%s': size in bits overflows 64 bits", label);
        }
        if (nbits % 8) {
            tensor_label(ps, e, label, sizeof label);
            return ss_fail(ps->err, SS_E_ST_PARTIAL_BYTE, "tensor '%s': %llu elements of %s fill %llu bits, not whole bytes",
                           label, (unsigned long long)numel, DTYPES[e->dtype].st_name, (unsigned long long)nbits);
        }
        if (e->end - e->begin != nbits / 8) {
            tensor_label(ps, e, label, sizeof label);
            return ss_fail(ps->err, SS_E_ST_NBYTES, "tensor '%s': data_offsets span %llu bytes, but shape and %s need %llu",
                           label, (unsigned long long)(e->end - e->begin), DTYPES[e->dtype].st_name, (unsigned long long)(nbits / 8));
        }
    }
    *data_len = start;
    return SS_OK;
}

/* Numbers each tensor's (dtype, shape) among the distinct ones, in order of first appearance
 * (a checkpoint of a million tensors has a few hundred): out->shape_of, and the distinct
 * shapes in out->shape_offsets / out->dims. */
static ss_status fill_shapes(parser *ps, ss_st_listing *out) {
    size_t n = ps->entries.len, ndims = 0;
    const entry *es = ps->entries.data;
    const int64_t *dims = ps->dims.data;
    for (size_t i = 0; i < n; i++) ndims += es[i].ndims;
    /* Each tensor as one record of bytes, its dtype then its dimensions, to compare as names. */
    char *records = malloc(n + ndims * sizeof *dims + 1);
    span *distinct = malloc((n + 1) * sizeof *distinct);
    name_set set = {0};
    out->shape_of = malloc((n + 1) * sizeof *out->shape_of);
    out->shape_offsets = malloc((n + 1) * sizeof *out->shape_offsets);
    out->dims = malloc((ndims + 1) * sizeof *out->dims);
    ss_status s = SS_OK;
    if (!records || !distinct || !out->shape_of || !out->shape_offsets || !out->dims || !name_set_init(&set, n))
        s = ss_fail(ps->err, SS_E_NOMEM, "out of memory");
    uint32_t at = 0, count = 0, d = 0;
    for (size_t i = 0; i < n && !s; i++) {
        span record = {at, 1 + es[i].ndims * (uint32_t)sizeof *dims};
        records[at] = (char)es[i].dtype;
        memcpy(records + at + 1, dims + es[i].dims_start, es[i].ndims * sizeof *dims);
        at += record.len;
        uint64_t tag;
        uint64_t *slot = name_slot(&set, records, distinct, records + record.start, record.len, &tag);
        if (!*slot) {
            distinct[count] = record;
            out->shape_offsets[count] = d;
            memcpy(out->dims + d, dims + es[i].dims_start, es[i].ndims * sizeof *dims);
            d += es[i].ndims;
            name_put(slot, tag, count++);
        }
        out->shape_of[i] = name_index(*slot);
    }
    if (!s) {
        out->shape_count = count;
        out->shape_offsets[count] = d;
    }
    free(records);
    free(distinct);
    free(set.slots);
    return s;
}

/* Moves the parser's vectors into the listing's columns. */
static ss_status fill_listing(parser *ps, uint64_t data_start, ss_st_listing *out) {
    size_t n = ps->entries.len;
    const entry *es = ps->entries.data;
    const char *text = ps->text.data;
    size_t key_bytes = 0, meta_bytes = 0;
    for (size_t i = 0; i < n; i++) key_bytes += es[i].key_len;
    const uint32_t *meta = ps->meta.data;
    for (size_t i = 0; i < ps->meta.len; i++) meta_bytes += meta[2 * i + 1];
    out->count = (uint32_t)n;
    out->key_offsets = malloc((n + 1) * sizeof *out->key_offsets);
    out->keys = malloc(key_bytes + n + 1);
    out->dtypes = malloc(n + 1);
    out->offsets = malloc((n + 1) * sizeof *out->offsets);
    out->nbytes = malloc((n + 1) * sizeof *out->nbytes);
    out->metadata_count = (uint32_t)(ps->meta.len / 2);
    out->metadata_offsets = malloc((ps->meta.len + 1) * sizeof *out->metadata_offsets);
    out->metadata = malloc(meta_bytes + 1);
    if (!out->key_offsets || !out->keys || !out->dtypes || !out->offsets || !out->nbytes || !out->metadata_offsets ||
        !out->metadata)
        return ss_fail(ps->err, SS_E_NOMEM, "out of memory");
    uint32_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const entry *e = &es[i];
        out->key_offsets[i] = k;
        memcpy(out->keys + k, text + e->key_start, e->key_len);
        k += e->key_len;
        out->keys[k++] = '\0';
        out->dtypes[i] = e->dtype;
        out->offsets[i] = data_start + e->begin;
        out->nbytes[i] = e->end - e->begin;
    }
    out->key_offsets[n] = k;
    uint32_t m = 0;
    for (size_t i = 0; i < ps->meta.len; i++) {
        out->metadata_offsets[i] = m;
        memcpy(out->metadata + m, text + meta[2 * i], meta[2 * i + 1]);
        m += meta[2 * i + 1];
    }
    out->metadata_offsets[ps->meta.len] = m;
    return fill_shapes(ps, out);
}

ss_status ss_st_parse(const ss_file *file, ss_st_listing *out, ss_error *err) {
    memset(out, 0, sizeof *out);
    uint8_t len_bytes[8];
    if (file->size < 8) return ss_fail(err, SS_E_ST_TOO_SMALL, "%llu bytes is too small for a safetensors header", (unsigned long long)file->size);
    ss_status s = ss_file_read(file, 0, len_bytes, 8, err);
    if (s) return s;
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = (n << 8) | len_bytes[i];
    if (n > MAX_HEADER) return ss_fail(err, SS_E_ST_HEADER_TOO_LARGE, "header length %llu exceeds the 100000000-byte limit", (unsigned long long)n);
    if (8 + n > file->size)
        return ss_fail(err, SS_E_ST_HEADER_PAST_EOF, "header length %llu runs past the end of a %llu-byte file",
                       (unsigned long long)n, (unsigned long long)file->size);
    /* Copy the header out of the mapping once (guarded) so the parser never faults. */
    char *header = malloc(n ? n : 1);
    if (!header) return ss_fail(err, SS_E_NOMEM, "out of memory");
    if ((s = ss_file_read(file, 8, header, n, err))) {
        free(header);
        return s;
    }
    parser ps = {.begin = header, .p = header, .end = header + n, .err = err};
    ps.text.item = 1;
    ps.entries.item = sizeof(entry);
    ps.dims.item = sizeof(int64_t);
    ps.meta.item = 2 * sizeof(uint32_t); /* one (start, len) pair per metadata string */
    /* Empty names and 0-dim shapes add nothing to text/dims: allocate them up front so that
     * "data + offset" and memcpy never see a NULL base (undefined even for a zero length). */
    if (!vec_reserve(&ps.text, 1) || !vec_reserve(&ps.dims, 1)) {
        free(ps.text.data);
        free(header);
        return ss_fail(err, SS_E_NOMEM, "out of memory");
    }
    uint64_t data_len = 0, data_end = 0;
    if (!ss_utf8_valid((const unsigned char *)header, n)) s = ss_fail(err, SS_E_ST_UTF8, "header is not valid UTF-8");
    else s = parse_header(&ps);
    if (!s) {
        if (!sorted_by_offsets(&ps)) /* a header of no tensors is sorted: qsort(NULL) would be UB */
            qsort(ps.entries.data, ps.entries.len, sizeof(entry), by_offsets);
        s = validate(&ps, &data_len);
    }
    if (!s) {
        out->header_len = n;
        if (!ss_add_u64(8 + n, data_len, &data_end))
            s = ss_fail(err, SS_E_ST_OFFSETS, "tensor data claims more than 2^64 bytes");
        out->data_end = data_end;
        s = s ? s : fill_listing(&ps, 8 + n, out);
    }
    if (!s && data_end > file->size) {
        /* Name the first tensor the file cuts: the listing stays filled for forensics. */
        uint32_t cut = 0;
        while (cut < out->count && out->offsets[cut] + out->nbytes[cut] <= file->size) cut++;
        char label[160] = "";
        if (cut < out->count)
            ss_quote_name(label, sizeof label, out->keys + out->key_offsets[cut], out->key_offsets[cut + 1] - out->key_offsets[cut] - 1);
        s = ss_fail(err, SS_E_ST_TRUNCATED, "truncated: %llu of %llu bytes present; tensor '%s' is cut short",
                    (unsigned long long)file->size, (unsigned long long)data_end, label);
    } else if (!s && data_end < file->size) {
        s = ss_fail(err, SS_E_ST_TRAILING, "%llu trailing bytes after the last tensor",
                    (unsigned long long)(file->size - data_end));
    }
    free(header);
    free(ps.text.data);
    free(ps.entries.data);
    free(ps.dims.data);
    free(ps.meta.data);
    if (s && s != SS_E_ST_TRUNCATED) ss_st_listing_free(out);
    return s;
}

void ss_st_listing_free(ss_st_listing *listing) {
    free(listing->key_offsets);
    free(listing->keys);
    free(listing->dtypes);
    free(listing->shape_of);
    free(listing->shape_offsets);
    free(listing->dims);
    free(listing->offsets);
    free(listing->nbytes);
    free(listing->metadata_offsets);
    free(listing->metadata);
    memset(listing, 0, sizeof *listing);
}

/* ---- shard index ------------------------------------------------------------------------- */

typedef struct {
    parser ps;           /* ps.text: the keys */
    vec keys, shard_of;  /* span, uint32_t */
    vec names, shards;   /* char: distinct shard names; span */
    vec scratch;         /* char: the member name being read */
    name_set key_set, shard_set;
    int seen_map, seen_metadata;
    int64_t total_size;
} index_parser;

static ss_status unusual(index_parser *ix, const char *what) {
    return ss_fail(ix->ps.err, SS_E_INDEX_UNUSUAL, "%s", what);
}

static ss_status nomem(index_parser *ix) { return ss_fail(ix->ps.err, SS_E_NOMEM, "out of memory"); }

/* One weight_map member: the key, then its shard, each name kept once. */
static ss_status index_entry(index_parser *ix) {
    parser *ps = &ix->ps;
    ss_status s;
    span key = {(uint32_t)ps->text.len, 0}, shard = {(uint32_t)ix->names.len, 0};
    if ((s = parse_string(ps, &ps->text))) return s;
    key.len = (uint32_t)(ps->text.len - key.start);
    if (!vec_push(&ps->text, "")) return nomem(ix); /* the NUL that ends it */
    skip_ws(ps);
    if (ps->p >= ps->end || *ps->p != ':') return json_error(ps, "expected ':'");
    ps->p++;
    skip_ws(ps);
    if (ps->p >= ps->end || *ps->p != '"') return unusual(ix, "a weight_map value is not a string");
    if ((s = parse_string(ps, &ix->names))) return s;
    shard.len = (uint32_t)(ix->names.len - shard.start);
    if (!name_set_reserve(&ix->key_set, ix->keys.len, ps->text.data, ix->keys.data)) return nomem(ix);
    uint64_t tag;
    uint64_t *slot = name_slot(&ix->key_set, ps->text.data, ix->keys.data, (char *)ps->text.data + key.start, key.len, &tag);
    if (*slot) return unusual(ix, "a weight_map key given twice");
    if (!vec_push(&ix->keys, &key)) return nomem(ix);
    name_put(slot, tag, (uint32_t)ix->keys.len - 1);
    /* Neighbouring keys mostly share a shard: the previous key's is tried before the set. */
    const char *name = (char *)ix->names.data + shard.start;
    const span *shards = ix->shards.data;
    uint32_t id = ix->shard_of.len ? ((uint32_t *)ix->shard_of.data)[ix->shard_of.len - 1] : 0;
    int seen = ix->shard_of.len && shards[id].len == shard.len &&
               memcmp((char *)ix->names.data + shards[id].start, name, shard.len) == 0;
    if (!seen) {
        if (!name_set_reserve(&ix->shard_set, ix->shards.len, ix->names.data, shards)) return nomem(ix);
        slot = name_slot(&ix->shard_set, ix->names.data, shards, name, shard.len, &tag);
        seen = *slot != 0;
        if (!seen) {
            if (!vec_push(&ix->shards, &shard)) return nomem(ix);
            name_put(slot, tag, (uint32_t)ix->shards.len - 1);
        }
        id = name_index(*slot);
    }
    if (seen) ix->names.len = shard.start; /* keep the first copy of each name only */
    return vec_push(&ix->shard_of, &id) ? SS_OK : nomem(ix);
}

/* The members of the object at ps->p: weight_map entries when `member` is NULL, else each
 * value handed to `member` with its name in ix->scratch. */
static ss_status index_object(index_parser *ix, ss_status (*member)(index_parser *), const char *not_object) {
    parser *ps = &ix->ps;
    ss_status s;
    if (ps->p >= ps->end || *ps->p != '{') return unusual(ix, not_object);
    ps->p++;
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == '}') return ps->p++, SS_OK;
    for (;;) {
        if (!member) {
            if ((s = index_entry(ix))) return s;
        } else {
            ix->scratch.len = 0;
            if ((s = parse_string(ps, &ix->scratch))) return s;
            skip_ws(ps);
            if (ps->p >= ps->end || *ps->p != ':') return json_error(ps, "expected ':'");
            ps->p++;
            skip_ws(ps);
            if ((s = member(ix))) return s;
        }
        skip_ws(ps);
        if (ps->p < ps->end && *ps->p == ',') { ps->p++; skip_ws(ps); continue; }
        if (ps->p < ps->end && *ps->p == '}') return ps->p++, SS_OK;
        return json_error(ps, "expected ',' or '}'");
    }
}

static ss_status metadata_member(index_parser *ix) {
    if (!key_is(&ix->scratch, 0, "total_size")) return skip_value(&ix->ps, 2);
    if (ix->total_size >= 0) return unusual(ix, "metadata.total_size given twice");
    uint64_t v = 0;
    ss_status s = SS_OK;
    int r = parse_uint(&ix->ps, &v, &s);
    if (r < 0) return s;
    if (r == 0 || v > INT64_MAX) return unusual(ix, "metadata.total_size is not an integer in int64");
    ix->total_size = (int64_t)v;
    return SS_OK;
}

static ss_status top_member(index_parser *ix) {
    int *seen = key_is(&ix->scratch, 0, "weight_map") ? &ix->seen_map
              : key_is(&ix->scratch, 0, "metadata") ? &ix->seen_metadata : NULL;
    if (!seen) return skip_value(&ix->ps, 1);
    if (*seen) return unusual(ix, "weight_map or metadata given twice");
    *seen = 1;
    if (seen == &ix->seen_map) return index_object(ix, NULL, "weight_map is not an object");
    return index_object(ix, metadata_member, "metadata is not an object");
}

/* Offsets (count + 1) of spans laid end to end in their text, each followed by `gap` bytes. */
static uint32_t *span_offsets(const vec *spans, uint32_t gap) {
    uint32_t *out = malloc((spans->len + 1) * sizeof *out);
    if (!out) return NULL;
    const span *sp = spans->data;
    out[0] = 0;
    for (size_t i = 0; i < spans->len; i++) out[i + 1] = sp[i].start + sp[i].len + gap;
    return out;
}

ss_status ss_index_parse(const char *data, size_t len, ss_index_listing *out, ss_error *err) {
    memset(out, 0, sizeof *out);
    out->total_size = -1;
    index_parser ix = {.ps = {.begin = data, .p = data, .end = data + len, .err = err}, .total_size = -1};
    ix.ps.text.item = ix.names.item = ix.scratch.item = 1;
    ix.keys.item = ix.shards.item = sizeof(span);
    ix.shard_of.item = sizeof(uint32_t);
    parser *ps = &ix.ps;
    ss_status s = SS_OK;
    /* every text gets a buffer up front: "data + 0" on a NULL base would be undefined */
    if (len > UINT32_MAX) s = unusual(&ix, "larger than 4 GiB"); /* spans are 32-bit */
    else if (!vec_reserve(&ps->text, 1) || !vec_reserve(&ix.names, 1) || !vec_reserve(&ix.scratch, 1) ||
             !vec_reserve(&ix.shard_of, 1))
        s = nomem(&ix);
    else if (!ss_utf8_valid((const unsigned char *)data, len)) s = unusual(&ix, "not UTF-8");
    else {
        skip_ws(ps);
        s = index_object(&ix, top_member, "not a JSON object");
        skip_ws(ps);
        if (!s && ps->p != ps->end) s = json_error(ps, "trailing characters after the object");
        if (!s && !ix.seen_map) s = unusual(&ix, "no weight_map");
    }
    if (!s) {
        out->count = (uint32_t)ix.keys.len;
        out->shard_count = (uint32_t)ix.shards.len;
        out->key_offsets = span_offsets(&ix.keys, 1);
        out->shard_offsets = span_offsets(&ix.shards, 0);
        out->keys = ps->text.data, ps->text.data = NULL;
        out->shards = ix.names.data, ix.names.data = NULL;
        out->shard_of = ix.shard_of.data, ix.shard_of.data = NULL;
        out->total_size = ix.total_size;
        if (!out->key_offsets || !out->shard_offsets || !out->shard_of) s = nomem(&ix);
    }
    free(ps->text.data);
    free(ix.names.data);
    free(ix.scratch.data);
    free(ix.keys.data);
    free(ix.shards.data);
    free(ix.shard_of.data);
    free(ix.key_set.slots);
    free(ix.shard_set.slots);
    if (s) ss_index_listing_free(out);
    return s;
}

void ss_index_listing_free(ss_index_listing *listing) {
    free(listing->key_offsets);
    free(listing->keys);
    free(listing->shard_of);
    free(listing->shard_offsets);
    free(listing->shards);
    memset(listing, 0, sizeof *listing);
    listing->total_size = -1;
}

ss_status ss_index_compare(const ss_index_listing *index, const char *names, size_t names_len, uint32_t count,
                           const uint32_t *file_of, uint8_t *index_state, uint32_t *found_file, uint8_t *name_listed,
                           ss_error *err) {
    size_t n = index->count;
    span *spans = malloc((n + 1) * sizeof *spans);
    name_set set = {0};
    if (!spans || !name_set_init(&set, n)) {
        free(spans);
        return ss_fail(err, SS_E_NOMEM, "out of memory");
    }
    uint64_t tag;
    for (uint32_t k = 0; k < n; k++) {
        spans[k] = (span){index->key_offsets[k], index->key_offsets[k + 1] - index->key_offsets[k] - 1};
        uint64_t *slot = name_slot(&set, index->keys, spans, index->keys + spans[k].start, spans[k].len, &tag);
        name_put(slot, tag, k);
    }
    ss_status s = SS_OK;
    memset(index_state, 0, n);
    const char *p = names, *end = names + names_len;
    for (uint32_t i = 0; i < count && !s; i++) {
        const char *stop = memchr(p, '\0', (size_t)(end - p));
        if (!stop) stop = end;
        if (i + 1 < count ? stop == end : stop != end) {
            s = ss_fail(err, SS_E_ARGUMENT, "%u names expected, separated by NULs", count);
            break;
        }
        uint64_t slot = *name_slot(&set, index->keys, spans, p, (uint32_t)(stop - p), &tag);
        name_listed[i] = slot != 0;
        if (slot) {
            uint32_t k = name_index(slot);
            index_state[k] = file_of[i] == index->shard_of[k] ? 1 : 2;
            found_file[k] = file_of[i];
        }
        p = stop + 1;
    }
    free(spans);
    free(set.slots);
    return s;
}
