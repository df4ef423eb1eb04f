/* Copy rows found by their byte offsets in one buffer into a contiguous buffer: the gather of
 * gpuloader/sources/arrow.py (ArrowSource), whose rows sit at irregular offsets in a memory map.
 *
 * NumPy has no call for it that writes into a given buffer: np.take first copies a non-contiguous
 * source whole, and fancy indexing returns a new array (one more copy of the batch). This is one
 * memcpy per row, bounds-checked before any byte is copied, without the GIL.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

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

static PyMethodDef methods[] = {
    {"gather", gather, METH_VARARGS,
     "gather(region, offsets, row_bytes, out): out[i*row_bytes:(i+1)*row_bytes] = "
     "region[offsets[i]:offsets[i]+row_bytes] for every int64 offset; IndexError if one lies outside region."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "gpuloader.sources._rows",
                                    "Rows copied by byte offset (see _rows.c).", -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__rows(void) { return PyModule_Create(&module); }
