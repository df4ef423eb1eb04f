/* gpuloader.ingest._stat: the (size, mtime_ns, inode, ctime_ns) of many files, from several threads.
 *
 * stat_paths(paths, count, out, threads)
 *
 * paths: the file paths, encoded as os.fsencode does, each ended by a NUL byte (count of them);
 * out: a writable buffer of 4 * count int64, filled row by row; threads: 1 to 64.
 * What os.stat gives (it follows symbolic links), one stat() call per path without the GIL, the paths split
 * into `threads` contiguous parts. A path that cannot be stat'ed raises OSError with its errno and name (the
 * first such path in the list), as os.stat would. See gpuloader/ingest/folder.py (files_fingerprint).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>

#define MAX_THREADS 64

typedef struct {
    const char *const *paths;
    int64_t *out;
    Py_ssize_t start, stop;
    Py_ssize_t failed; /* the first index whose stat failed, or -1 */
    int error;         /* its errno */
} Part;

static void *stat_part(void *argument)
{
    Part *part = (Part *)argument;
    struct stat info;
    for (Py_ssize_t i = part->start; i < part->stop; ++i) {
        if (stat(part->paths[i], &info) != 0) {
            part->failed = i;
            part->error = errno;
            return NULL;
        }
        int64_t *row = part->out + 4 * i;
        row[0] = (int64_t)info.st_size;
        row[1] = (int64_t)info.st_mtim.tv_sec * 1000000000 + info.st_mtim.tv_nsec;
        row[2] = (int64_t)info.st_ino;
        row[3] = (int64_t)info.st_ctim.tv_sec * 1000000000 + info.st_ctim.tv_nsec;
    }
    return NULL;
}

static PyObject *stat_paths(PyObject *module, PyObject *args)
{
    (void)module;
    Py_buffer blob, out;
    Py_ssize_t count;
    int threads;
    if (!PyArg_ParseTuple(args, "y*nw*i:stat_paths", &blob, &count, &out, &threads))
        return NULL;
    PyObject *result = NULL;
    const char **paths = NULL;
    if (count < 0 || threads < 1 || threads > MAX_THREADS) {
        PyErr_Format(PyExc_ValueError, "stat_paths: count must be >= 0 and threads 1 to %d; received %zd, %d",
                     MAX_THREADS, count, threads);
        goto done;
    }
    if (count > PY_SSIZE_T_MAX / 32 || out.len != 4 * (Py_ssize_t)sizeof(int64_t) * count ||
        ((uintptr_t)out.buf) % sizeof(int64_t)) {
        PyErr_Format(PyExc_ValueError, "stat_paths: out must be %zd aligned int64 (4 per path); it has %zd bytes",
                     4 * count, out.len);
        goto done;
    }
    const char *text = (const char *)blob.buf;
    if (count && (blob.len == 0 || text[blob.len - 1] != '\0')) {
        PyErr_SetString(PyExc_ValueError, "stat_paths: every path must end with a NUL byte");
        goto done;
    }
    paths = malloc(sizeof(char *) * (count ? count : 1));
    if (paths == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t found = 0;
    for (Py_ssize_t at = 0; at < blob.len && found <= count; ++found) {
        if (found < count)
            paths[found] = text + at;
        at += (Py_ssize_t)strlen(text + at) + 1;
    }
    if (found != count) {
        PyErr_Format(PyExc_ValueError, "stat_paths: %zd NUL-ended paths given, count says %zd", found, count);
        goto done;
    }
    if (threads > count)
        threads = count ? (int)count : 1;
    Part parts[MAX_THREADS];
    pthread_t handles[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    for (int t = 0; t < threads; ++t)
        parts[t] = (Part){paths, (int64_t *)out.buf, count * t / threads, count * (t + 1) / threads, -1, 0};
    Py_BEGIN_ALLOW_THREADS
    for (int t = 1; t < threads; ++t)
        started[t] = pthread_create(&handles[t], NULL, stat_part, &parts[t]) == 0;
    for (int t = 1; t < threads; ++t)
        if (!started[t])
            stat_part(&parts[t]); /* no thread to be had: this one does the part */
    stat_part(&parts[0]);
    for (int t = 1; t < threads; ++t)
        if (started[t])
            pthread_join(handles[t], NULL);
    Py_END_ALLOW_THREADS
    for (int t = 0; t < threads; ++t) {
        if (parts[t].failed >= 0) {
            PyObject *name = PyUnicode_DecodeFSDefault(paths[parts[t].failed]);
            if (name != NULL) {
                errno = parts[t].error;
                PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, name);
                Py_DECREF(name);
            }
            goto done;
        }
    }
    result = Py_None;
    Py_INCREF(result);
done:
    free(paths);
    PyBuffer_Release(&blob);
    PyBuffer_Release(&out);
    return result;
}

static PyMethodDef methods[] = {
    {"stat_paths", stat_paths, METH_VARARGS,
     "stat_paths(paths, count, out, threads): each NUL-ended path's (size, mtime_ns, inode, ctime_ns) into out "
     "(4 * count int64), os.stat's values, from `threads` threads without the GIL; see _stat.c."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "gpuloader.ingest._stat",
                                    "Many files' stat values at once (see _stat.c).", -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__stat(void)
{
    return PyModule_Create(&module);
}
