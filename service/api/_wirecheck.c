/* Sync's quick look at a request, in one pass over its encoding.
 *
 * `plain_updates(wire, latest_seconds)` reads an encoded marketo_destination.v1.SyncRequest and
 * says, for each update, whether it is plainly good: every field known, present at most once,
 * every string (ids and profile keys and values too) valid UTF-8 without a NUL character, within
 * the limits of `service.api.sync_checks` (profile id, update id, event time, profile size and
 * nesting, memberships), and encoded so that protobuf decodes it.
 *
 * It returns None when the request itself is not read here (an unknown top-level field, or a
 * destination_id or request_id that is not valid UTF-8), or
 * `(destination_id, request_id, count, unsure, memberships)`:
 *   destination_id, request_id
 *                the request's own fields (the last of each, as protobuf reads them; "" when
 *                absent);
 *   count        the number of updates;
 *   unsure       the indexes of updates that are not plainly good (`service.api.sync_checks`
 *                checks each of them one by one: they may still be good, in an unusual
 *                encoding);
 *   memberships  `(index, audience_ids)` of each plainly good update that names audiences.
 *
 * The verdict only ever errs towards "unsure": an update called plainly good is one that
 * `service.api.sync_checks.check_update` accepts and protobuf decodes (tests/test_sync_checks.py
 * holds the two to each other; `make fuzz` runs those tests under AddressSanitizer and UBSan).
 * Nothing is allocated for an update without memberships.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* The limits of service.api.sync_checks (kept equal by tests/test_sync_checks.py). */
#define MAX_PROFILE_ID_LENGTH 512
#define MAX_UPDATE_ID_LENGTH 128
#define MAX_PROFILE_BYTES (256 * 1024)
#define MAX_PROFILE_DEPTH 32
#define MAX_MEMBERSHIPS 1000

enum { VARINT = 0, I64 = 1, LEN = 2, I32 = 5 };

typedef struct {
    const uint8_t *p;
    const uint8_t *end;
} Reader;

/* A varint of at most `width` bytes (10 for a value; protobuf reads a tag or a length in at most
 * 5); 0 when it runs past the end or past `width` bytes. */
static int read_varint_of(Reader *r, uint64_t *out, int width) {
    uint64_t value = 0;
    for (int shift = 0; shift < 7 * width && r->p < r->end; shift += 7) {
        uint8_t byte = *r->p++;
        value |= (uint64_t)(byte & 0x7F) << shift;
        if (!(byte & 0x80)) {
            if (shift == 63 && byte > 1) {
                return 0;
            }
            *out = value;
            return 1;
        }
    }
    return 0;
}

static int read_varint(Reader *r, uint64_t *out) { return read_varint_of(r, out, 10); }

/* A field's tag; 0 at a malformed one. */
static int read_tag(Reader *r, uint32_t *field, int *wire_type) {
    uint64_t tag;
    if (!read_varint_of(r, &tag, 5) || tag > UINT32_MAX || (tag >> 3) == 0) {
        return 0;
    }
    *field = (uint32_t)(tag >> 3);
    *wire_type = (int)(tag & 7);
    return 1;
}

/* A length-delimited field's contents; 0 when it runs past the end. */
static int read_len(Reader *r, Reader *inner) {
    uint64_t length;
    if (!read_varint_of(r, &length, 5) || length > (uint64_t)(r->end - r->p)) {
        return 0;
    }
    inner->p = r->p;
    inner->end = r->p + length;
    r->p += length;
    return 1;
}

/* Whether the bytes are valid UTF-8 (no overlong forms, surrogates or values past U+10FFFF,
 * as protobuf requires of a string) without a NUL character (U+0000: PostgreSQL's text refuses
 * it, so the service refuses it in every string); `chars` gets the number of code points. */
static int utf8_chars(const uint8_t *p, const uint8_t *end, Py_ssize_t *chars) {
    Py_ssize_t count = 0;
    while (p < end) {
        /* Eight ASCII bytes at a time, the common case; a byte that is zero or has its high
         * bit set ends the run (zero bytes found as in "Bit Twiddling Hacks"). */
        while (end - p >= 8) {
            uint64_t eight;
            memcpy(&eight, p, 8);
            if ((eight | ((eight - 0x0101010101010101ULL) & ~eight)) & 0x8080808080808080ULL) {
                break;
            }
            p += 8;
            count += 8;
        }
        if (p == end) {
            break;
        }
        uint8_t c = *p;
        count++;
        if (c == 0) {
            return 0;
        }
        if (c < 0x80) {
            p++;
            continue;
        }
        Py_ssize_t need;
        uint8_t low = 0x80, high = 0xBF;
        if (c >= 0xC2 && c <= 0xDF) {
            need = 1;
        } else if (c >= 0xE0 && c <= 0xEF) {
            need = 2;
            if (c == 0xE0) {
                low = 0xA0;
            } else if (c == 0xED) {
                high = 0x9F;
            }
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 3;
            if (c == 0xF0) {
                low = 0x90;
            } else if (c == 0xF4) {
                high = 0x8F;
            }
        } else {
            return 0;
        }
        if (end - p <= need || p[1] < low || p[1] > high) {
            return 0;
        }
        for (Py_ssize_t i = 2; i <= need; i++) {
            if ((p[i] & 0xC0) != 0x80) {
                return 0;
            }
        }
        p += need + 1;
    }
    *chars = count;
    return 1;
}

static int valid_string(const Reader *s) {
    Py_ssize_t chars;
    return utf8_chars(s->p, s->end, &chars);
}

static int plain_value(Reader value, int depth);

/* A google.protobuf.Struct nested within `depth` levels (counted as sync_checks.too_deep counts):
 * each map entry exactly a string key then a value. */
static int plain_struct(Reader r, int depth) {
    if (depth <= 0) {
        return 0;
    }
    while (r.p < r.end) {
        uint32_t field;
        int wire_type;
        Reader entry, key, value;
        if (!read_tag(&r, &field, &wire_type) || field != 1 || wire_type != LEN ||
            !read_len(&r, &entry)) {
            return 0;
        }
        if (!read_tag(&entry, &field, &wire_type) || field != 1 || wire_type != LEN ||
            !read_len(&entry, &key) || !valid_string(&key)) {
            return 0;
        }
        if (!read_tag(&entry, &field, &wire_type) || field != 2 || wire_type != LEN ||
            !read_len(&entry, &value) || entry.p != entry.end) {
            return 0;
        }
        if (!plain_value(value, depth - 1)) {
            return 0;
        }
    }
    return 1;
}

/* A google.protobuf.Value holding exactly one kind. */
static int plain_value(Reader r, int depth) {
    uint32_t field;
    int wire_type;
    if (!read_tag(&r, &field, &wire_type)) {
        return 0;
    }
    int plain = 0;
    switch (field) {
        case 1: /* null_value */
        case 4: /* bool_value */ {
            uint64_t v;
            plain = wire_type == VARINT && read_varint(&r, &v) && v <= (field == 1 ? 0 : 1);
            break;
        }
        case 2: /* number_value */
            plain = wire_type == I64 && r.end - r.p >= 8;
            r.p += plain ? 8 : 0;
            break;
        case 3: /* string_value */ {
            Reader s;
            plain = wire_type == LEN && read_len(&r, &s) && valid_string(&s);
            break;
        }
        case 5: /* struct_value */ {
            Reader s;
            plain = wire_type == LEN && read_len(&r, &s) && plain_struct(s, depth);
            break;
        }
        case 6: /* list_value: repeated Value values = 1 */ {
            Reader list, item;
            plain = wire_type == LEN && read_len(&r, &list) && depth > 0;
            while (plain && list.p < list.end) {
                plain = read_tag(&list, &field, &wire_type) && field == 1 && wire_type == LEN &&
                        read_len(&list, &item) && plain_value(item, depth - 1);
            }
            break;
        }
        default:
            return 0;
    }
    return plain && r.p == r.end;
}

/* A google.protobuf.Timestamp after the epoch and before `latest` seconds. */
static int plain_event_time(Reader r, int64_t latest) {
    uint64_t seconds = 0, nanos = 0;
    int seen_seconds = 0, seen_nanos = 0;
    while (r.p < r.end) {
        uint32_t field;
        int wire_type;
        if (!read_tag(&r, &field, &wire_type) || wire_type != VARINT) {
            return 0;
        }
        if (field == 1 && !seen_seconds++) {
            if (!read_varint(&r, &seconds)) {
                return 0;
            }
        } else if (field == 2 && !seen_nanos++) {
            if (!read_varint(&r, &nanos)) {
                return 0;
            }
        } else {
            return 0;
        }
    }
    return seconds > 0 && seconds < (uint64_t)INT64_MAX && (int64_t)seconds < latest &&
           nanos < 1000000000;
}

/* An AudienceMembership: a non-empty audience id (returned, new reference) and a status of
 * REALIZED, EXISTING or EXITED, each once. NULL when it is not plain, with no error set. */
static PyObject *plain_membership(Reader r) {
    Reader id = {NULL, NULL};
    uint64_t status = 0;
    int seen_status = 0;
    while (r.p < r.end) {
        uint32_t field;
        int wire_type;
        if (!read_tag(&r, &field, &wire_type)) {
            return NULL;
        }
        if (field == 1 && wire_type == LEN && id.p == NULL) {
            if (!read_len(&r, &id)) {
                return NULL;
            }
        } else if (field == 2 && wire_type == VARINT && !seen_status++) {
            if (!read_varint(&r, &status)) {
                return NULL;
            }
        } else {
            return NULL;
        }
    }
    if (id.p == NULL || id.p == id.end || status < 1 || status > 3 || !valid_string(&id)) {
        return NULL;
    }
    return PyUnicode_DecodeUTF8((const char *)id.p, id.end - id.p, NULL);
}

/* The audience ids of an update's encoded memberships, as a new tuple; Py_None (new reference)
 * when they are not plainly good (one not plain, or an audience named twice); NULL on a Python
 * error. */
static PyObject *plain_audiences(Py_ssize_t count, const Reader *fields) {
    if (count > MAX_MEMBERSHIPS) {
        Py_RETURN_NONE;
    }
    PyObject *ids = PyTuple_New(count);
    if (ids == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *id = plain_membership(fields[i]);
        if (id == NULL) {
            Py_DECREF(ids);
            if (PyErr_Occurred()) {
                return NULL;
            }
            Py_RETURN_NONE;
        }
        PyTuple_SET_ITEM(ids, i, id);
        for (Py_ssize_t j = 0; j < i; j++) {
            int same = PyUnicode_Compare(PyTuple_GET_ITEM(ids, j), id);
            if (same == 0) {
                Py_DECREF(ids);
                Py_RETURN_NONE;
            }
        }
    }
    return ids;
}

typedef struct {
    int plain;
    PyObject *audiences; /* a tuple of audience ids, or NULL when none are named */
} Verdict;

#define INLINE_MEMBERSHIPS 16

/* The verdict on one encoded ProfileUpdate; -1 on a Python error. */
static int check_update(Reader r, int64_t latest, Verdict *verdict) {
    Reader inline_fields[INLINE_MEMBERSHIPS];
    Reader *memberships = inline_fields;
    Py_ssize_t count = 0, capacity = INLINE_MEMBERSHIPS;
    int seen_id = 0, seen_time = 0, seen_profile = 0, seen_update_id = 0;
    int plain = 1;
    verdict->plain = 0;
    verdict->audiences = NULL;
    while (plain && r.p < r.end) {
        uint32_t field;
        int wire_type;
        Reader value;
        if (!read_tag(&r, &field, &wire_type) || wire_type != LEN || !read_len(&r, &value)) {
            plain = 0;
            break;
        }
        Py_ssize_t chars;
        switch (field) {
            case 1: /* profile_id */
                plain = !seen_id++ && utf8_chars(value.p, value.end, &chars) && chars > 0 &&
                        chars <= MAX_PROFILE_ID_LENGTH;
                break;
            case 2: /* event_time */
                plain = !seen_time++ && plain_event_time(value, latest);
                break;
            case 3: /* profile */
                plain = !seen_profile++ && value.end - value.p <= MAX_PROFILE_BYTES &&
                        plain_struct(value, MAX_PROFILE_DEPTH);
                break;
            case 4: /* audiences */
                if (count == capacity) {
                    if (capacity > MAX_MEMBERSHIPS) {
                        plain = 0;
                        break;
                    }
                    Reader *grown = PyMem_Malloc(sizeof(Reader) * capacity * 4);
                    if (grown == NULL) {
                        if (memberships != inline_fields) {
                            PyMem_Free(memberships);
                        }
                        PyErr_NoMemory();
                        return -1;
                    }
                    memcpy(grown, memberships, sizeof(Reader) * count);
                    if (memberships != inline_fields) {
                        PyMem_Free(memberships);
                    }
                    memberships = grown;
                    capacity *= 4;
                }
                memberships[count++] = value;
                break;
            case 5: /* update_id */
                plain = !seen_update_id++ && utf8_chars(value.p, value.end, &chars) &&
                        chars <= MAX_UPDATE_ID_LENGTH;
                break;
            default:
                plain = 0;
        }
    }
    plain = plain && seen_id && seen_time;
    int status = 0;
    if (plain && count) {
        PyObject *ids = plain_audiences(count, memberships);
        if (ids == NULL) {
            status = -1;
        } else if (ids == Py_None) {
            Py_DECREF(ids);
            plain = 0;
        } else {
            verdict->audiences = ids;
        }
    }
    if (memberships != inline_fields) {
        PyMem_Free(memberships);
    }
    verdict->plain = plain;
    return status;
}

/* A string field of the request as str; NULL (with no exception set) when it is not valid UTF-8,
 * "" when the field is absent (`s->p` NULL). */
static PyObject *request_string(const Reader *s) {
    if (s->p == NULL) {
        return PyUnicode_FromStringAndSize(NULL, 0);
    }
    if (!valid_string(s)) {
        return NULL;
    }
    return PyUnicode_DecodeUTF8((const char *)s->p, s->end - s->p, NULL);
}

static PyObject *plain_updates(PyObject *Py_UNUSED(module), PyObject *args) {
    Py_buffer wire;
    long long latest;
    if (!PyArg_ParseTuple(args, "y*L:plain_updates", &wire, &latest)) {
        return NULL;
    }
    PyObject *unsure = PyList_New(0);
    PyObject *memberships = PyList_New(0);
    PyObject *destination_id = NULL, *request_id = NULL;
    PyObject *result = NULL;
    if (unsure == NULL || memberships == NULL) {
        goto done;
    }
    Reader r = {wire.buf, (const uint8_t *)wire.buf + wire.len};
    Reader destination = {NULL, NULL}, request = {NULL, NULL};
    Py_ssize_t index = 0;
    while (r.p < r.end) {
        uint32_t field;
        int wire_type;
        Reader value;
        if (!read_tag(&r, &field, &wire_type) || wire_type != LEN || field > 3 ||
            !read_len(&r, &value)) {
            result = Py_NewRef(Py_None);
            goto done;
        }
        if (field == 1) {
            destination = value;
            continue;
        }
        if (field == 3) {
            request = value;
            continue;
        }
        Verdict verdict;
        if (check_update(value, latest, &verdict) < 0) {
            goto done;
        }
        PyObject *item = NULL;
        if (!verdict.plain) {
            item = PyLong_FromSsize_t(index);
            if (item == NULL || PyList_Append(unsure, item) < 0) {
                Py_XDECREF(item);
                goto done;
            }
        } else if (verdict.audiences != NULL) {
            item = Py_BuildValue("(nN)", index, verdict.audiences);
            if (item == NULL || PyList_Append(memberships, item) < 0) {
                Py_XDECREF(item);
                goto done;
            }
        }
        Py_XDECREF(item);
        index++;
    }
    destination_id = request_string(&destination);
    request_id = destination_id == NULL ? NULL : request_string(&request);
    if (request_id == NULL) {
        result = PyErr_Occurred() ? NULL : Py_NewRef(Py_None);
        goto done;
    }
    result = Py_BuildValue("(OOnOO)", destination_id, request_id, index, unsure, memberships);
done:
    Py_XDECREF(destination_id);
    Py_XDECREF(request_id);
    Py_XDECREF(unsure);
    Py_XDECREF(memberships);
    PyBuffer_Release(&wire);
    return result;
}

static PyMethodDef methods[] = {
    {"plain_updates", plain_updates, METH_VARARGS,
     "plain_updates(wire, latest_seconds)\n"
     "    -> (destination_id, request_id, count, unsure, memberships) | None\n\n"
     "Which updates of an encoded SyncRequest are plainly good (see the module source)."},
    {NULL, NULL, 0, NULL},
};

static PyModuleDef_Slot slots[] = {
    {0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "service.api._wirecheck",
    .m_doc = "Sync's quick look at a request's updates, in C (see service.api.sync_checks).",
    .m_size = 0,
    .m_methods = methods,
    .m_slots = slots,
};

PyMODINIT_FUNC PyInit__wirecheck(void) { return PyModuleDef_Init(&module); }
