/* Copy rows found by their byte offsets in one buffer into a contiguous buffer: the gather of
 * gpuloader/sources/arrow.py (ArrowSource), whose rows sit at irregular offsets in a memory map.
 *
 * NumPy has no call for it that writes into a given buffer: np.take first copies a non-contiguous
 * source whole, and fancy indexing returns a new array (one more copy of the batch). This is one
 * memcpy per row, bounds-checked before any byte is copied, without the GIL.
 *
 * take() is the whole read of a batch from one region in one call: the index mapping, the chunk of each
 * row (a binary search over the chunks' first rows) and its byte offset are worked out here, not by a
 * dozen NumPy calls per batch in Python (about 10 us a batch and column, a tenth of an epoch's time).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* Rows are copied in the batch's (random) order, so nearly every row starts on a page the TLB does not hold:
 * a file map has 4 KB pages (a NumPy array in RAM has 2 MB ones), and in a virtual machine a page walk is
 * slow. While row i is copied, one byte of every page of row i + AHEAD is prefetched: its page walks and
 * first cache lines overlap the copy. Measured on the issue-19 bench data (60000 rows of 3136 bytes,
 * batches of 256, one process, interleaved): 29 ms an epoch without it, 21.6 ms with it, NumPy's take from a
 * RAM array on 2 MB pages 21.7 ms; prefetching every cache line, or 8 rows ahead, was slower. */
#define AHEAD 4
#define PAGE 4096
static inline void prefetch_row(const char *row, Py_ssize_t row_bytes) {
#if defined(__GNUC__) || defined(__clang__)
    Py_ssize_t k;
    for (k = 0; k < row_bytes; k += PAGE) {
        __builtin_prefetch(row + k, 0, 3);
    }
    __builtin_prefetch(row + row_bytes - 1, 0, 3);
#else
    (void)row;
    (void)row_bytes;
#endif
}

static PyObject *gather(PyObject *self, PyObject *args) {
    Py_buffer region, offsets, out;
    Py_ssize_t row_bytes, i, count;
    PyObject *result = NULL;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*y*nw*", &region, &offsets, &row_bytes, &out)) {
        return NULL;
    }
    count = offsets.len / (Py_ssize_t)sizeof(int64_t);
    if (row_bytes <= 0 || offsets.len % (Py_ssize_t)sizeof(int64_t) != 0 || count > PY_SSIZE_T_MAX / row_bytes ||
        out.len != count * row_bytes || ((uintptr_t)offsets.buf) % sizeof(int64_t) != 0) {
        PyErr_Format(PyExc_ValueError,
                     "gather(region, offsets, row_bytes, out): offsets must be aligned int64, row_bytes > 0 and out "
                     "exactly len(offsets) * row_bytes bytes; got %zd offset bytes, row_bytes %zd, %zd out bytes",
                     offsets.len, row_bytes, out.len);
        goto done;
    }
    {
        const int64_t *starts = (const int64_t *)offsets.buf;
        const char *source = (const char *)region.buf;
        char *target = (char *)out.buf;
        for (i = 0; i < count; i++) {
            if (starts[i] < 0 || starts[i] > (int64_t)(region.len - row_bytes)) {
                PyErr_Format(PyExc_IndexError, "gather: row %zd starts at byte %lld, outside the %zd-byte region",
                             i, (long long)starts[i], region.len);
                goto done;
            }
        }
        Py_BEGIN_ALLOW_THREADS
        for (i = 0; i < count; i++) {
            if (i + AHEAD < count) {
                prefetch_row(source + starts[i + AHEAD], row_bytes);
            }
            memcpy(target + i * row_bytes, source + starts[i], (size_t)row_bytes);
        }
        Py_END_ALLOW_THREADS
    }
    Py_INCREF(Py_None);
    result = Py_None;
done:
    PyBuffer_Release(&region);
    PyBuffer_Release(&offsets);
    PyBuffer_Release(&out);
    return result;
}

/* The byte offset of column row `row` (0 <= row < firsts[chunks]): its chunk's first-row offset plus its
 * place in the chunk. firsts: the chunks' first rows, ascending, firsts[0] == 0, chunks + 1 of them. */
static int64_t offset_of(int64_t row, const int64_t *firsts, const int64_t *starts, Py_ssize_t chunks,
                         Py_ssize_t row_bytes) {
    Py_ssize_t low = 0, high = chunks; /* firsts[low] <= row < firsts[high] */
    while (high - low > 1) {
        Py_ssize_t middle = low + (high - low) / 2;
        if (firsts[middle] <= row) {
            low = middle;
        } else {
            high = middle;
        }
    }
    return starts[low] + (row - firsts[low]) * (int64_t)row_bytes;
}

static int is_int64_array(const Py_buffer *view) { return ((uintptr_t)view->buf) % sizeof(int64_t) == 0 &&
                                                          view->len % (Py_ssize_t)sizeof(int64_t) == 0; }

static PyObject *take(PyObject *self, PyObject *args) {
    Py_buffer region, firsts_view, starts_view, rows_view, out, indices_view = {0};
    PyObject *indices_object, *result = NULL;
    Py_ssize_t row_bytes, chunks, count, mapped = 0, i, bad = -1;
    int64_t *offsets = NULL, bad_value = 0;
    const char *why = NULL;
    int mapping = 0; /* indices is not None: indices_view holds a buffer */
    (void)self;
    if (!PyArg_ParseTuple(args, "y*y*y*Oy*nw*", &region, &firsts_view, &starts_view, &indices_object, &rows_view,
                          &row_bytes, &out)) {
        return NULL;
    }
    if (indices_object != Py_None) {
        if (PyObject_GetBuffer(indices_object, &indices_view, PyBUF_SIMPLE) < 0) {
            goto done;
        }
        mapping = 1;
    }
    chunks = starts_view.len / (Py_ssize_t)sizeof(int64_t);
    count = rows_view.len / (Py_ssize_t)sizeof(int64_t);
    mapped = indices_view.len / (Py_ssize_t)sizeof(int64_t);
    if (row_bytes <= 0 || chunks < 1 || !is_int64_array(&firsts_view) || !is_int64_array(&starts_view) ||
        !is_int64_array(&rows_view) || (mapping && !is_int64_array(&indices_view)) ||
        firsts_view.len != (chunks + 1) * (Py_ssize_t)sizeof(int64_t) || count > PY_SSIZE_T_MAX / row_bytes ||
        out.len != count * row_bytes) {
        PyErr_Format(PyExc_ValueError,
                     "take(region, firsts, starts, indices, rows, row_bytes, out): firsts, starts, indices and rows "
                     "must be aligned int64 arrays, len(firsts) == len(starts) + 1 >= 2, row_bytes > 0 and out "
                     "exactly len(rows) * row_bytes bytes; got %zd chunk starts, %zd first-row bytes, %zd rows, "
                     "row_bytes %zd, %zd out bytes", chunks, firsts_view.len, count, row_bytes, out.len);
        goto done;
    }
    offsets = PyMem_RawMalloc((size_t)(count ? count : 1) * sizeof(int64_t));
    if (offsets == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    {
        const int64_t *rows = (const int64_t *)rows_view.buf, *indices = (const int64_t *)indices_view.buf;
        const int64_t *firsts = (const int64_t *)firsts_view.buf, *starts = (const int64_t *)starts_view.buf;
        const int64_t column_rows = firsts[chunks];
        const int64_t source_rows = mapping ? (int64_t)mapped : column_rows;
        const char *source = (const char *)region.buf;
        char *target = (char *)out.buf;
        Py_BEGIN_ALLOW_THREADS
        for (i = 0; i < count; i++) { /* every offset found and checked before any byte is copied */
            int64_t row = rows[i];
            if (row < 0 || row >= source_rows) {
                why = "row";
                bad = i;
                bad_value = row;
                break;
            }
            if (mapping) {
                row = indices[row];
                if (row < 0 || row >= column_rows) {
                    why = "mapped row";
                    bad = i;
                    bad_value = row;
                    break;
                }
            }
            offsets[i] = offset_of(row, firsts, starts, chunks, row_bytes);
            if (offsets[i] < 0 || offsets[i] > (int64_t)(region.len - row_bytes)) {
                why = "byte offset";
                bad = i;
                bad_value = offsets[i];
                break;
            }
        }
        if (bad < 0) {
            for (i = 0; i < count; i++) {
                if (i + AHEAD < count) {
                    prefetch_row(source + offsets[i + AHEAD], row_bytes);
                }
                memcpy(target + i * row_bytes, source + offsets[i], (size_t)row_bytes);
            }
        }
        Py_END_ALLOW_THREADS
        if (bad >= 0) {
            PyErr_Format(PyExc_IndexError,
                         "take: rows[%zd]: %s %lld is outside the source (%lld rows, %lld column rows, a %zd-byte "
                         "region)", bad, why, (long long)bad_value, (long long)source_rows, (long long)column_rows,
                         region.len);
            goto done;
        }
    }
    Py_INCREF(Py_None);
    result = Py_None;
done:
    PyMem_RawFree(offsets);
    if (mapping) {
        PyBuffer_Release(&indices_view);
    }
    PyBuffer_Release(&region);
    PyBuffer_Release(&firsts_view);
    PyBuffer_Release(&starts_view);
    PyBuffer_Release(&rows_view);
    PyBuffer_Release(&out);
    return result;
}

static PyMethodDef methods[] = {
    {"take", take, METH_VARARGS,
     "take(region, firsts, starts, indices, rows, row_bytes, out): out's i-th row_bytes bytes = the bytes of "
     "source row rows[i]: column row r = indices[rows[i]] (rows[i] where indices is None), in chunk c with "
     "firsts[c] <= r < firsts[c + 1], at byte starts[c] + (r - firsts[c]) * row_bytes of region. IndexError "
     "(nothing copied) if a row, mapped row or offset lies outside."},
    {"gather", gather, METH_VARARGS,
     "gather(region, offsets, row_bytes, out): out[i*row_bytes:(i+1)*row_bytes] = "
     "region[offsets[i]:offsets[i]+row_bytes] for every int64 offset; IndexError if one lies outside region."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "gpuloader.sources._rows",
                                    "Rows copied by byte offset (see _rows.c).", -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__rows(void) { return PyModule_Create(&module); }
