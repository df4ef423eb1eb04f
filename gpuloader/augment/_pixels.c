/* gpuloader.augment._pixels: the host kernel of the built-in ops, fused with the gather.
 *
 * gather_augment(source, rows, ids, keys, ops, fills, or_slots, and_slots, height, width,
 *                planes, pixel_bytes, out, bytewise, in_kind, out_kind, norm)
 *
 * planes: 1 for channels-last images, C for channels-first ones (pixel_bytes is then one value's).
 * in_kind, out_kind, norm: Normalize (out_kind 0: none): the stored values' kind, the output's, and a float32
 * (mean, scale) per channel; each sample is traced into a staging image, then normalized a row at a time.
 *
 * For each output sample b: its words from ids[b] (gl_sample_words), the traced
 * source row of each output row and column (gl_sample_traces), then its bytes
 * from source image rows[b]: whole runs of columns with memcpy (the trace of a
 * row of pixels is runs of +1 or -1 steps), the reversed runs of a flip pixel by
 * pixel, and the painted pixels last; rows of 16 to 64 bytes (masks, small images)
 * whole by table lookups from a template per distinct row slots (lookup_rows). With bytewise=True step 3 is
 * gl_sample_bytes, the byte-at-a-time loop the CUDA kernel runs (for tests).
 *
 * Every size, index and op parameter is checked before any byte is read; the
 * loop runs without the GIL. See _pixels.h for the tracing and
 * gpuloader/augment/fused.py for the Python side.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdlib.h>
#include <string.h>

#include "_pixels.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <tmmintrin.h>
#define GL_SHUFFLE 1
/* Reversed pixels 16 bytes at a time with SSSE3's byte shuffle (checked at run time): pixels
 * k..k+m-1 of dst are source pixels -k..-(k+m-1), m = 16 / pixel_bytes. Stops where a 16-byte store
 * would pass the run's end; returns the pixels done. Reads less than 16 bytes from source pixel 0 on:
 * callers check those lie in the source. */
static void reverse_pixels(unsigned char *dst, const unsigned char *src, long long count, long long pixel_bytes);

/* A reversed run of `count` pixels in every output row (dst pixel k = source pixel -k of the row's source
 * row), 16 bytes at a time with SSSE3's byte shuffle (checked at run time): m = 16 / pixel_bytes pixels a
 * shuffle, as many as fit before a 16-byte store would pass the run's end, then the rest pixel by pixel.
 * A row whose 16-byte reads (less than 16 bytes from source pixel 0 on) would pass `end` goes pixel by pixel. */
__attribute__((target("ssse3"))) static void reverse_rows_shuffled(
    unsigned char *out, const unsigned char *source, const int *src_rows, long long height, long long row_bytes,
    long long dst_offset, long long src_offset, long long count, long long pixel_bytes, const unsigned char *order,
    const unsigned char *end)
{
    const long long m = 16 / pixel_bytes;
    const __m128i mask = _mm_loadu_si128((const __m128i *)order);
    long long shuffled = 0; /* pixels a row done by shuffles */
    while (shuffled + m <= count && pixel_bytes * shuffled + 16 <= pixel_bytes * count)
        shuffled += m;
    for (long long row = 0; row < height; ++row) {
        unsigned char *dst = out + row * row_bytes + dst_offset;
        const unsigned char *src = source + (long long)src_rows[row] * row_bytes + src_offset;
        long long k = 0;
        if (src + 16 <= end) {
            for (; k < shuffled; k += m) {
                const __m128i pixels = _mm_loadu_si128((const __m128i *)(src - pixel_bytes * (k + m - 1)));
                _mm_storeu_si128((__m128i *)(dst + pixel_bytes * k), _mm_shuffle_epi8(pixels, mask));
            }
        }
        reverse_pixels(dst + pixel_bytes * k, src - pixel_bytes * k, count - k, pixel_bytes);
    }
}
#endif

/* Runs this narrow or narrower are copied a pixel column at a time over all rows. */
#define GL_NARROW_RUN 4

/* Reversed runs this long or longer are shuffled 16 bytes at a time. */
#define GL_SHUFFLED_RUN 8


typedef struct {
    long long start, length, source, step;
} Run;

/* dst pixel k = src pixel -k, pixel by pixel; constant sizes let the compiler inline the small copies. */
static void reverse_pixels(unsigned char *dst, const unsigned char *src, long long count, long long pixel_bytes)
{
    if (pixel_bytes == 3 && count > 2) {
        /* 3-byte pixels moved as 4-byte words: the extra byte read belongs to source pixel -(k-1) and the
           extra byte written is dst pixel k + 1's, written next; the first and last pixels exactly */
        memcpy(dst, src, 3);
        for (long long k = 1; k < count - 1; ++k) {
            unsigned int word;
            memcpy(&word, src - 3 * k, 4);
            memcpy(dst + 3 * k, &word, 4);
        }
        memcpy(dst + 3 * (count - 1), src - 3 * (count - 1), 3);
        return;
    }
#define GL_REVERSED(BYTES)                                                                                            \
    for (long long k = 0; k < count; ++k)                                                                             \
        memcpy(dst + k * (BYTES), src - k * (BYTES), (BYTES));                                                       \
    return;
    switch (pixel_bytes) {
    case 1: GL_REVERSED(1)
    case 2: GL_REVERSED(2)
    case 3: GL_REVERSED(3)
    case 4: GL_REVERSED(4)
    case 6: GL_REVERSED(6)
    case 8: GL_REVERSED(8)
    case 12: GL_REVERSED(12)
    case 16: GL_REVERSED(16)
    default: GL_REVERSED(pixel_bytes)
    }
#undef GL_REVERSED
}

/* Pixel column `dst_offset` (bytes into a row) of every output row from column `src_offset` of its source row. */
static void copy_column(unsigned char *out, const unsigned char *source, const int *src_rows, long long height,
                        long long row_bytes, long long dst_offset, long long src_offset, long long pixel_bytes)
{
#define GL_COLUMN(BYTES)                                                                                              \
    for (long long row = 0; row < height; ++row)                                                                      \
        memcpy(out + row * row_bytes + dst_offset, source + (long long)src_rows[row] * row_bytes + src_offset,      \
               (BYTES));                                                                                              \
    return;
    switch (pixel_bytes) {
    case 1: GL_COLUMN(1)
    case 2: GL_COLUMN(2)
    case 3: GL_COLUMN(3)
    case 4: GL_COLUMN(4)
    case 8: GL_COLUMN(8)
    default: GL_COLUMN(pixel_bytes)
    }
#undef GL_COLUMN
}

static long long column_runs(const int *src_cols, long long width, Run *runs)
{
    long long count = 0;
    for (long long col = 0; col < width;) {
        Run run = {col, 1, src_cols[col], 1};
        if (col + 1 < width && src_cols[col + 1] == src_cols[col] - 1)
            run.step = -1;
        while (col + run.length < width && src_cols[col + run.length] == run.source + run.step * run.length)
            run.length++;
        runs[count++] = run;
        col += run.length;
    }
    return count;
}

/* Axes this long or shorter are traced in 32-bit arithmetic: a shifted coordinate (in (-size, 2 * size)) and
 * 2 * last then fit an int. The 32-bit loops vectorise; 64-bit ones do not (SSE2 has no 64-bit compare), which
 * cost the CIFAR-sized augmented batch a fifth of the kernel's time. (A test builds the kernel with
 * -DGL_INT_AXIS=0 to run the 64-bit loops on images of its size.) */
#ifndef GL_INT_AXIS
#define GL_INT_AXIS (1LL << 30)
#endif

/* A crop of an axis longer than GL_INT_AXIS: host_trace_axis's crop loops in 64-bit arithmetic. */
static void trace_crop_wide(const long long *op, long long last, long long shift, int *src, unsigned int *hits)
{
    if (op[0] == GL_CROP_REFLECT) {
        for (long long i = 0; i <= last; ++i)
            src[i] = (int)gl_reflected(src[i] + shift, last);
    } else {
        const unsigned int bit = 1u << op[3];
        for (long long i = 0; i <= last; ++i) {
            const long long c = src[i] + shift;
            hits[i] |= (c < 0 || c > last) ? bit : 0u;
            src[i] = (int)(c < 0 ? 0 : (c > last ? last : c));
        }
    }
}

/* The host's traces: the ops' draws of one sample decoded once, then each axis traced a whole op at a time
 * (loops over all coordinates that the compiler vectorises). The same results as gl_sample_traces, which
 * traces one coordinate at a time through every op as a GPU thread does (both checked by the tests). */
static void host_trace_axis(int axis, long long size, const long long *ops, long long n_ops,
                            const unsigned long long *words, int *src, unsigned int *hits)
{
    /* coordinates are in [0, size) with size < 2**31 (checked), so they, last - c and a cutout's clipped bounds
       fit ints; a crop's shifted coordinate and 2 * last do when size <= GL_INT_AXIS (else trace_crop_wide) */
    const int last = (int)(size - 1);
    for (int i = 0; i <= last; ++i) {
        src[i] = i;
        hits[i] = 0;
    }
    for (long long j = n_ops - 1; j >= 0; --j) {
        const long long *op = ops + GL_OP_FIELDS * j;
        const unsigned long long *own = words + op[2];
        if (op[0] == GL_FLIP) {
            if (axis == 1 && (own[0] >> 63))
                for (int i = 0; i <= last; ++i)
                    src[i] = last - src[i];
        } else if (op[0] == GL_CUTOUT) {
            const long long first = gl_integer(own[axis], size) - op[1] / 2, end = first + op[1];
            /* the square's rows (or columns) clipped to the image: in [0, size] */
            const int top = (int)(first < 0 ? 0 : first), bottom = (int)(end > size ? size : end);
            const unsigned int bit = 1u << op[3];
            for (int i = 0; i <= last; ++i)
                hits[i] |= (src[i] >= top && src[i] < bottom) ? bit : 0u;
        } else if (size > GL_INT_AXIS) {
            trace_crop_wide(op, last, gl_integer(own[axis], 2 * op[1] + 1) - op[1], src, hits);
        } else {
            const int shift = (int)(gl_integer(own[axis], 2 * op[1] + 1) - op[1]); /* |shift| < size */
            if (op[0] == GL_CROP_REFLECT) {
                for (int i = 0; i <= last; ++i) {
                    int c = src[i] + shift;
                    c = c < 0 ? -c : c;
                    src[i] = c > last ? 2 * last - c : c;
                }
            } else {
                const unsigned int bit = 1u << op[3];
                for (int i = 0; i <= last; ++i) {
                    /* written without branches (a mask, a clamp in two steps) so that it vectorises */
                    const int c = src[i] + shift, low = c < 0 ? 0 : c;
                    hits[i] |= bit & (0u - (unsigned int)((c < 0) | (c > last)));
                    src[i] = low > last ? last : low;
                }
            }
        }
    }
}

/* Work space of one call: per-sample traces, runs and painted columns. */
typedef struct {
    int *src_rows, *src_cols;
    unsigned int *row_hits, *col_hits;
    Run *runs, *spans;         /* a row's runs of columns; its painted spans (source: the slot) */
    unsigned char *fill_rows;  /* each slot's fill pixel repeated over a row */
    const unsigned char *order; /* the byte shuffle reversing 16 / pixel_bytes pixels, or NULL */
    const unsigned char *end;   /* the end of the source buffer */
    unsigned char *image;       /* room for a copy of one source plane and GL_SLACK bytes, or NULL */
    unsigned char *staged;      /* Normalize: the traced image before its values are normalized */
    float *means, *scales;      /* Normalize: each value's mean and scale along a row (per plane when planes > 1) */
    float *row;                 /* Normalize to float16 or bfloat16: a row's float32 values */
    float *norm;                /* Normalize: (mean, scale) per channel, aligned */
    unsigned char *fill_values; /* the fills, aligned for their values (the bytewise path reads them typed) */
} Work;

/* The source image of sample b + GL_PREFETCH_AHEAD is requested while sample b is written, its first
 * GL_PREFETCH_BYTES at most: the samples' rows are scattered over the source, so each image's first reads would
 * otherwise wait on memory (hardware prefetchers follow a stream within an image, not the jump to the next). */
#define GL_PREFETCH_AHEAD 2
#define GL_PREFETCH_BYTES (16 * 1024)

static void prefetch_image(const unsigned char *image, long long image_bytes)
{
    const long long bytes = image_bytes < GL_PREFETCH_BYTES ? image_bytes : GL_PREFETCH_BYTES;
    for (long long offset = 0; offset < bytes; offset += 64)
        __builtin_prefetch(image + offset);
}

/* A sample with a long reversed run is first copied here when it is at most this large: one sequential
 * read that the hardware prefetches, where reversed reads of the stored image wait on each cache line. */
#define GL_IMAGE_COPY_BYTES (64 * 1024)
#define GL_SLACK 16

/* The painted pixels of one sample (whose other pixels are written), their columns listed once per distinct
 * row slots; with `hit_rows_only`, only the rows that meet a slot (a row meeting none is written whole). */
static void paint_rows(long long height, long long width, long long pixel_bytes, unsigned int or_slots,
                       unsigned int and_slots, const Work *work, unsigned char *out, int hit_rows_only)
{
    const unsigned int *row_hits = work->row_hits, *col_hits = work->col_hits;
    const long long row_bytes = width * pixel_bytes;
    if ((or_slots | and_slots) == 0)
        return;
    unsigned int col_or = 0, col_and = 0, row_or = 0, row_and = 0, listed_for = 0;
    for (long long col = 0; col < width; ++col) {
        col_or |= col_hits[col] & or_slots;
        col_and |= col_hits[col] & and_slots;
    }
    for (long long row = 0; row < height; ++row) {
        row_or |= row_hits[row] & or_slots;
        row_and |= row_hits[row] & and_slots;
    }
    if (!(col_or || row_or || (col_and & row_and)))
        return; /* nothing painted in this sample */
    long long listed = -1; /* painted spans of the row slots `listed_for`; -1: none listed yet */
    for (long long row = 0; row < height; ++row) {
        const unsigned int hits = row_hits[row];
        if (!((hits & or_slots) || col_or || (hits & col_and)) || (hit_rows_only && hits == 0))
            continue;
        if (listed < 0 || hits != listed_for) {
            listed = 0;
            listed_for = hits;
            int previous = -1;
            for (long long col = 0; col < width; ++col) {
                const unsigned int painted = gl_paint(hits, col_hits[col], or_slots, and_slots);
                const int slot = painted ? GL_TOP_BIT(painted) : -1;
                if (slot >= 0 && slot == previous) {
                    work->spans[listed - 1].length++;
                } else if (slot >= 0) {
                    Run span = {col, 1, slot, 0};
                    work->spans[listed++] = span;
                }
                previous = slot;
            }
        }
        unsigned char *dst = out + row * row_bytes;
        for (long long i = 0; i < listed; ++i) {
            const Run span = work->spans[i];
            memcpy(dst + span.start * pixel_bytes, work->fill_rows + span.source * row_bytes,
                   span.length * pixel_bytes);
        }
    }
}

/* One sample's bytes, row by row. The longest forward run of columns is copied for a block of rows with
 * consecutive source rows at once (one memcpy spanning the rows: the bytes it lays between the rows' runs are
 * the other runs' places, written next); the other runs row by row; then the painted pixels, their columns
 * listed once per distinct row slots. */
static void sample_rows(long long height, long long width, long long pixel_bytes, const unsigned char *source,
                        unsigned int or_slots, unsigned int and_slots, const Work *work,
                        unsigned char *out)
{
    const int *src_rows = work->src_rows, *src_cols = work->src_cols;
    Run *runs = work->runs;
    const long long n_runs = column_runs(src_cols, width, runs), row_bytes = width * pixel_bytes;
    long long longest = -1;
    for (long long r = 0; r < n_runs; ++r)
        if (runs[r].step > 0 && (longest < 0 || runs[r].length > runs[longest].length))
            longest = r;
    if (longest >= 0 && 2 * runs[longest].length < width)
        longest = -1; /* a short forward run (a flipped image's border): its copy across rows would move the
                         whole image for a few pixels a row */
    const Run main_run = longest >= 0 ? runs[longest] : runs[0];
    long long others = 0, narrow = 0; /* the other runs: `others` wide ones first in `runs`, narrow ones after */
    Run *narrow_runs = work->spans;
    for (long long r = 0; r < n_runs; ++r) {
        if (r == longest)
            continue;
        if (runs[r].length <= GL_NARROW_RUN)
            narrow_runs[narrow++] = runs[r];
        else
            runs[others++] = runs[r];
    }
    for (long long row = 0, block = 1; longest >= 0 && row < height; row += block, block = 1) {
        while (row + block < height && src_rows[row + block] == src_rows[row] + block)
            block++;
        memcpy(out + row * row_bytes + main_run.start * pixel_bytes,
               source + (long long)src_rows[row] * row_bytes + main_run.source * pixel_bytes,
               (block - 1) * row_bytes + main_run.length * pixel_bytes);
    }
    /* the other wide runs (after the blocks, which lay bytes in their places), a run at a time over all rows */
    const unsigned char *copy = NULL; /* the source image, copied for reversed reads */
    for (long long r = 0; r < others; ++r) {
        const Run run = runs[r];
        const long long dst_offset = run.start * pixel_bytes, src_offset = run.source * pixel_bytes;
#ifdef GL_SHUFFLE
        if (run.step < 0 && work->order != NULL && run.length >= GL_SHUFFLED_RUN) {
            if (copy == NULL && work->image != NULL) {
                memcpy(work->image, source, height * row_bytes);
                copy = work->image;
            }
            const unsigned char *from = copy != NULL ? copy : source;
            const unsigned char *end = copy != NULL ? copy + height * row_bytes + GL_SLACK : work->end;
            reverse_rows_shuffled(out, from, src_rows, height, row_bytes, dst_offset, src_offset, run.length,
                                  pixel_bytes, work->order, end);
            continue;
        }
#endif
        for (long long row = 0; row < height; ++row) {
            unsigned char *dst = out + row * row_bytes + dst_offset;
            const unsigned char *src = source + (long long)src_rows[row] * row_bytes + src_offset;
            if (run.step > 0)
                memcpy(dst, src, run.length * pixel_bytes);
            else
                reverse_pixels(dst, src, run.length, pixel_bytes);
        }
    }
    for (long long r = 0; r < narrow; ++r) /* a crop's or a flip's border: a column at a time */
        for (long long k = 0; k < narrow_runs[r].length; ++k)
            copy_column(out, source, src_rows, height, row_bytes, (narrow_runs[r].start + k) * pixel_bytes,
                        (narrow_runs[r].source + narrow_runs[r].step * k) * pixel_bytes, pixel_bytes);
    paint_rows(height, width, pixel_bytes, or_slots, and_slots, work, out, 0);
}

/* A row of `count` values of `in_kind` normalized into float32 (gpuloader/augment/normalize.py's rule). */
static void normalize_row(int in_kind, const unsigned char *src, long long count, const float *means,
                          const float *scales, float *dst)
{
#define GL_ROW(TYPE)                                                                                                  \
    for (long long k = 0; k < count; ++k)                                                                             \
        dst[k] = gl_normalized((float)((const TYPE *)src)[k], means[k], scales[k]);                                   \
    return;
    switch (in_kind) {
    case GL_VALUE_U8: GL_ROW(unsigned char)
    case GL_VALUE_I8: GL_ROW(signed char)
    case GL_VALUE_U16: GL_ROW(unsigned short)
    case GL_VALUE_I16: GL_ROW(short)
    case GL_VALUE_U32: GL_ROW(unsigned int)
    case GL_VALUE_I32: GL_ROW(int)
    case GL_VALUE_U64: GL_ROW(unsigned long long)
    case GL_VALUE_I64: GL_ROW(long long)
    case GL_VALUE_F32: GL_ROW(float)
    default: GL_ROW(double)
    }
#undef GL_ROW
}

/* The float32 values of a row stored as float16 or bfloat16. */
static void store_row(int out_kind, const float *src, long long count, unsigned char *dst)
{
    unsigned short *out = (unsigned short *)dst;
    if (out_kind == GL_VALUE_F16)
        for (long long k = 0; k < count; ++k)
            out[k] = (unsigned short)gl_half_bits(src[k]);
    else
        for (long long k = 0; k < count; ++k)
            out[k] = (unsigned short)gl_bfloat_bits(src[k]);
}

/* One sample's traced image (in `staged`) normalized into `out`, a row at a time. */
static void normalize_image(const Work *work, int in_kind, int out_kind, long long planes, long long height,
                            long long row_values, long long in_size, unsigned char *out)
{
    const long long out_size = out_kind == GL_VALUE_F32 ? 4 : 2;
    for (long long plane = 0; plane < planes; ++plane) {
        const float *means = work->means + plane * row_values, *scales = work->scales + plane * row_values;
        for (long long row = 0; row < height; ++row) {
            const long long first = (plane * height + row) * row_values;
            const unsigned char *src = work->staged + first * in_size;
            if (out_kind == GL_VALUE_F32) {
                normalize_row(in_kind, src, row_values, means, scales, (float *)(out + first * out_size));
            } else {
                normalize_row(in_kind, src, row_values, means, scales, work->row);
                store_row(out_kind, work->row, row_values, out + first * out_size);
            }
        }
    }
}

static int op_words(long long kind)
{
    return kind == GL_FLIP ? 1 : 2;
}

/* The checks that keep every read and write in bounds; a message names the broken rule. */
static const char *check_ops(const long long *ops, long long n_ops, long long n_words, long long height,
                             long long width, long long fill_count, unsigned int or_slots, unsigned int and_slots)
{
    for (long long j = 0; j < n_ops; ++j) {
        const long long *op = ops + GL_OP_FIELDS * j;
        if (op[0] < GL_CROP_REFLECT || op[0] > GL_CUTOUT)
            return "an op's kind is not one of the built-in ops";
        if (op[2] < 0 || op[2] + op_words(op[0]) > n_words)
            return "an op's words lie outside the sample's words";
        if ((op[0] == GL_CROP_REFLECT || op[0] == GL_CROP_CONSTANT) &&
            (op[1] < 0 || op[1] >= height || op[1] >= width))
            return "a crop's padding must be in [0, min(height, width))";
        if (op[0] == GL_CUTOUT && (op[1] < 0 || op[1] > (1LL << 30)))
            return "a cutout's size must be in [0, 2**30]";
        const int paints = op[0] == GL_CROP_CONSTANT || op[0] == GL_CUTOUT;
        if (paints && (op[3] < 0 || op[3] >= 32 || op[3] >= fill_count))
            return "a fill slot lies outside the fills";
        if (paints && !(((op[0] == GL_CUTOUT ? and_slots : or_slots) >> op[3]) & 1u))
            return "a fill slot's kind disagrees with or_slots/and_slots";
    }
    if (fill_count < 32 && ((or_slots | and_slots) >> fill_count) != 0)
        return "or_slots/and_slots name slots beyond the fills";
    return NULL;
}

/* a * b into *result, or 0 when it overflows (or either is negative). */
static int product(long long a, long long b, long long *result)
{
    return a >= 0 && b >= 0 && !__builtin_mul_overflow(a, b, result);
}

static int aligned(const Py_buffer *buffer, long long alignment)
{
    return alignment <= 1 || (unsigned long long)(size_t)buffer->buf % (unsigned long long)alignment == 0;
}

#ifdef GL_SHUFFLE
/* Rows of a multiple of 16 bytes, at most GL_SHUFFLED_ROW_BYTES, can be written 16 bytes at a time by byte
 * shuffles: per sample, each 16-byte chunk of an output row that meets no slot lists the 16-byte chunks it
 * draws from (of the source row, or of a slot's fill row for the columns a constant crop paints in every row)
 * with a shuffle each; every row is then a few loads, shuffles and ORs a chunk, with no call per run. The rows
 * that meet a slot (a crop's border rows, a cutout's) get their painted spans after (paint_rows). */
#define GL_SHUFFLED_ROW_BYTES 256
#define GL_CHUNK_SOURCES 6 /* chunks an output chunk may draw from; a sample needing more takes sample_rows */

typedef struct {
    int count;
    long long base[GL_CHUNK_SOURCES]; /* >= 0: offset in the source row; < 0: -1 - offset in fill_rows */
    unsigned char index[GL_CHUNK_SOURCES][16];
} ChunkPlan;

/* The chunks of a row that meets no slot; 0 when a chunk draws from more than GL_CHUNK_SOURCES chunks. */
static int plan_row(ChunkPlan *chunks, long long width, long long pixel_bytes, unsigned int or_slots,
                    const Work *work)
{
    const long long row_bytes = width * pixel_bytes;
    ChunkPlan *chunk = chunks;
    int source = 0;
    for (long long col = 0, byte = 0; col < width; ++col) {
        const unsigned int painted = work->col_hits[col] & or_slots; /* gl_paint with no row slots */
        const long long first = painted ? GL_TOP_BIT(painted) * row_bytes + byte
                                        : (long long)work->src_cols[col] * pixel_bytes;
        for (long long within = 0; within < pixel_bytes; ++within, ++byte) {
            const long long offset = first + within, i = byte & 15;
            const long long base = painted ? -1 - (offset & ~15LL) : (offset & ~15LL);
            if (i == 0) {
                chunk = chunks + (byte >> 4);
                chunk->count = source = 0;
            }
            if (source >= chunk->count || chunk->base[source] != base) {
                source = 0;
                while (source < chunk->count && chunk->base[source] != base)
                    source++;
                if (source == chunk->count) {
                    if (chunk->count == GL_CHUNK_SOURCES)
                        return 0;
                    chunk->base[source] = base;
                    memset(chunk->index[source], 0x80, 16); /* 0x80: a zero byte, ORed with the others' */
                    chunk->count++;
                }
            }
            chunk->index[source][i] = (unsigned char)(offset & 15);
        }
    }
    return 1;
}

/* One plane of one sample by byte shuffles (see GL_SHUFFLED_ROW_BYTES); 0, with nothing written, when a chunk
 * draws from too many chunks (the caller then takes sample_rows). */
__attribute__((target("ssse3"))) static int shuffle_rows(long long height, long long width, long long pixel_bytes,
                                                         const unsigned char *source, unsigned int or_slots,
                                                         unsigned int and_slots, const Work *work,
                                                         unsigned char *out)
{
    ChunkPlan chunks[GL_SHUFFLED_ROW_BYTES / 16];
    if (!plan_row(chunks, width, pixel_bytes, or_slots, work))
        return 0;
    const long long row_bytes = width * pixel_bytes, n_chunks = row_bytes / 16;
    for (long long row = 0; row < height; ++row) {
        const unsigned char *src = source + (long long)work->src_rows[row] * row_bytes;
        unsigned char *dst = out + row * row_bytes;
        for (long long k = 0; k < n_chunks; ++k) {
            const ChunkPlan *chunk = chunks + k;
            __m128i value = _mm_setzero_si128();
            for (int s = 0; s < chunk->count; ++s) {
                const long long base = chunk->base[s];
                const unsigned char *from = base >= 0 ? src + base : work->fill_rows + (-1 - base);
                value = _mm_or_si128(value, _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)from),
                                                             _mm_loadu_si128((const __m128i *)chunk->index[s])));
            }
            _mm_storeu_si128((__m128i *)(dst + 16 * k), value);
        }
    }
    paint_rows(height, width, pixel_bytes, or_slots, and_slots, work, out, 1);
    return 1;
}

/* Rows of 16 to GL_LOOKUP_ROW_BYTES bytes, a multiple of 16 (a uint8 mask up to 64 pixels wide, an int16 one up
 * to 32, a plane of a channels-first image, a 16 x 16 x 3 uint8 image), are written whole, painted pixels
 * included, by table lookups: a row's source chunks (16 bytes each) are loaded once, and each output chunk is its
 * fill bytes ORed with one byte shuffle of each source chunk (index 0x80 gives a zero byte). Which byte comes
 * from where depends on the row's slots only, so a row template (LookupRow) is built once per distinct row slots
 * in a sample (most samples have 2 to 4: no slot, a crop's border, a cutout's rows) and serves every row and
 * plane with those slots: no per-run calls, no paint pass, and every read inside the row's source row. */
#define GL_LOOKUP_ROW_BYTES 64
#define GL_LOOKUP_CHUNKS (GL_LOOKUP_ROW_BYTES / 16)
#define GL_LOOKUP_TEMPLATES 4 /* templates kept per sample; a fifth distinct row slots replaces one in turn */

typedef struct {
    unsigned int hits;                                          /* the row slots it is for */
    unsigned char index[GL_LOOKUP_CHUNKS][GL_LOOKUP_ROW_BYTES]; /* per source chunk: each output byte's place in it */
    unsigned char fill[GL_LOOKUP_ROW_BYTES];                    /* each painted byte's fill; 0 elsewhere */
} LookupRow;

/* The sample's source places (the template of a row meeting no slot, before painting): per source chunk j and
 * output byte, its source byte's place in chunk j, or 0x80 when that byte is in another chunk. */
static void plan_lookup_sources(LookupRow *sources, long long width, long long pixel_bytes, const Work *work)
{
    memset(sources->index, 0x80, sizeof(sources->index));
    if (pixel_bytes == 1) {
        for (long long col = 0; col < width; ++col)
            sources->index[work->src_cols[col] >> 4][col] = (unsigned char)(work->src_cols[col] & 15);
        return;
    }
    for (long long col = 0; col < width; ++col) {
        const long long first = (long long)work->src_cols[col] * pixel_bytes;
        for (long long within = 0; within < pixel_bytes; ++within)
            sources->index[(first + within) >> 4][col * pixel_bytes + within] = (unsigned char)((first + within) & 15);
    }
}

/* The template of the rows whose slots are `hits`: the source places, with index 0x80 (a zero byte) and the fill
 * at the bytes of the pixels that gl_paint paints, a span of columns with the same column slots at a time (each
 * span's bytes picked in a chunk by two byte compares: rows are at most 64 bytes, so places fit a signed byte). */
__attribute__((target("ssse3"), always_inline)) static inline void plan_lookup_row(
    LookupRow *plan, const LookupRow *sources, unsigned int hits, const Run *spans, long long n_spans,
    long long row_bytes, long long pixel_bytes, unsigned int or_slots, unsigned int and_slots, const Work *work,
    const int chunks)
{
    const __m128i places = _mm_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    __m128i index[GL_LOOKUP_CHUNKS][GL_LOOKUP_CHUNKS], fill[GL_LOOKUP_CHUNKS];
    plan->hits = hits;
    for (int k = 0; k < chunks; ++k) {
        fill[k] = _mm_setzero_si128();
        for (int j = 0; j < chunks; ++j)
            index[j][k] = _mm_loadu_si128((const __m128i *)(sources->index[j] + 16 * k));
    }
    for (long long i = 0; i < n_spans; ++i) {
        const unsigned int painted = gl_paint(hits, (unsigned int)spans[i].source, or_slots, and_slots);
        if (!painted)
            continue;
        const long long at = spans[i].start * pixel_bytes, end = at + spans[i].length * pixel_bytes;
        const unsigned char *fill_row = work->fill_rows + GL_TOP_BIT(painted) * row_bytes;
        for (int k = 0; k < chunks; ++k) {
            const __m128i place = _mm_add_epi8(places, _mm_set1_epi8((char)(16 * k)));
            const __m128i in = _mm_and_si128(_mm_cmpgt_epi8(place, _mm_set1_epi8((char)(at - 1))),
                                             _mm_cmpgt_epi8(_mm_set1_epi8((char)end), place));
            const __m128i fills = _mm_loadu_si128((const __m128i *)(fill_row + 16 * k));
            fill[k] = _mm_or_si128(_mm_andnot_si128(in, fill[k]), _mm_and_si128(in, fills));
            for (int j = 0; j < chunks; ++j)
                index[j][k] = _mm_or_si128(index[j][k], in);
        }
    }
    for (int k = 0; k < chunks; ++k) {
        _mm_storeu_si128((__m128i *)(plan->fill + 16 * k), fill[k]);
        for (int j = 0; j < chunks; ++j)
            _mm_storeu_si128((__m128i *)(plan->index[j] + 16 * k), index[j][k]);
    }
}

/* One row of `chunks` chunks from its template (a constant `chunks` lets the compiler unroll it). */
__attribute__((target("ssse3"), always_inline)) static inline void lookup_row(const LookupRow *plan,
                                                                               const unsigned char *src,
                                                                               unsigned char *dst, const int chunks)
{
    __m128i from[GL_LOOKUP_CHUNKS];
    for (int j = 0; j < chunks; ++j)
        from[j] = _mm_loadu_si128((const __m128i *)(src + 16 * j));
    for (int k = 0; k < chunks; ++k) {
        __m128i value = _mm_loadu_si128((const __m128i *)(plan->fill + 16 * k));
        for (int j = 0; j < chunks; ++j)
            value = _mm_or_si128(value, _mm_shuffle_epi8(from[j], _mm_loadu_si128((const __m128i *)(plan->index[j] +
                                                                                                   16 * k))));
        _mm_storeu_si128((__m128i *)(dst + 16 * k), value);
    }
}

/* Every plane of one sample by table lookups (see GL_LOOKUP_ROW_BYTES), rows of `chunks` chunks. */
__attribute__((target("ssse3"), always_inline)) static inline void lookup_rows_of(
    long long height, long long width, long long pixel_bytes, long long planes, const unsigned char *source,
    unsigned int or_slots, unsigned int and_slots, const Work *work, unsigned char *out, const int chunks)
{
    LookupRow sources, templates[GL_LOOKUP_TEMPLATES];
    Run *spans = work->spans; /* the runs of columns with the same column slots (source: the slots) */
    long long n_spans = 0;
    int made = 0, replaced = 0, t = 0; /* templates built; the next one to replace when all are in use; the row's */
    const long long row_bytes = width * pixel_bytes, plane_bytes = height * row_bytes;
    plan_lookup_sources(&sources, width, pixel_bytes, work);
    for (long long col = 0; col < width; ++col) {
        if (n_spans > 0 && (unsigned int)spans[n_spans - 1].source == work->col_hits[col]) {
            spans[n_spans - 1].length++;
        } else {
            Run span = {col, 1, work->col_hits[col], 0};
            spans[n_spans++] = span;
        }
    }
    for (long long row = 0; row < height; ++row) {
        const unsigned int hits = work->row_hits[row];
        if (made == 0 || templates[t].hits != hits) { /* not the previous row's template */
            t = 0;
            while (t < made && templates[t].hits != hits)
                t++;
            if (t == made) {
                if (made < GL_LOOKUP_TEMPLATES) {
                    made++;
                } else {
                    t = replaced;
                    replaced = (replaced + 1) % GL_LOOKUP_TEMPLATES;
                }
                plan_lookup_row(templates + t, &sources, hits, spans, n_spans, row_bytes, pixel_bytes, or_slots,
                                and_slots, work, chunks);
            }
        }
        const unsigned char *src = source + (long long)work->src_rows[row] * row_bytes;
        unsigned char *dst = out + row * row_bytes;
        for (long long plane = 0; plane < planes; ++plane)
            lookup_row(templates + t, src + plane * plane_bytes, dst + plane * plane_bytes, chunks);
    }
}

__attribute__((target("ssse3"))) static void lookup_rows(long long height, long long width, long long pixel_bytes,
                                                        long long planes, const unsigned char *source,
                                                        unsigned int or_slots, unsigned int and_slots,
                                                        const Work *work, unsigned char *out)
{
    switch (width * pixel_bytes / 16) {
    case 1: lookup_rows_of(height, width, pixel_bytes, planes, source, or_slots, and_slots, work, out, 1); break;
    case 2: lookup_rows_of(height, width, pixel_bytes, planes, source, or_slots, and_slots, work, out, 2); break;
    case 3: lookup_rows_of(height, width, pixel_bytes, planes, source, or_slots, and_slots, work, out, 3); break;
    default: lookup_rows_of(height, width, pixel_bytes, planes, source, or_slots, and_slots, work, out, 4); break;
    }
}
#endif

/* One image array a call writes: the leader's (the call's own arguments) or a follower's (the same draws and
 * traces, its own pixels, fills and output). */
typedef struct {
    Py_buffer source, out, fills, norm;
    unsigned int or_slots, and_slots;
    Py_ssize_t planes, pixel_bytes;
    int in_kind, out_kind;
    long long image_bytes, out_image_bytes, n_images;
    unsigned char order[16]; /* the byte shuffle reversing 16 / pixel_bytes pixels */
    int shuffled;            /* its rows can be written by byte shuffles (shuffle_rows) */
    int lookup;              /* its rows are written by table lookups (lookup_rows) */
    Work work;               /* the shared traces and runs, and this target's fills, staging and copy */
} Target;

/* The checks of the arguments every target shares, before anything is allocated or read. */
static const char *check_shared(const Py_buffer *rows, const Py_buffer *ids, const Py_buffer *keys,
                                const Py_buffer *ops)
{
    if (rows->len % 8 || ids->len != rows->len || keys->len % 16 || ops->len % (8 * GL_OP_FIELDS))
        return "rows, ids (int64), keys (2 uint64 per word) or ops (4 int64 per op) have a bad size";
    if (!aligned(rows, 8) || !aligned(ids, 8) || !aligned(keys, 8) || !aligned(ops, 8))
        return "rows, ids, keys and ops must be 8-byte aligned (int64 and uint64 arrays)";
    return NULL;
}

/* The checks of one target's sizes, alignments and kinds for `n` rows of images of the shared height and width,
 * before anything is allocated or read (every product checked for overflow before it is used); sets its sizes. */
static const char *check_target(Target *target, long long height, long long width, long long n)
{
    long long plane_bytes, values, image_bytes;
    const long long planes = target->planes, pixel_bytes = target->pixel_bytes;
    const int in_kind = target->in_kind, out_kind = target->out_kind;
    if (height < 1 || width < 1 || planes < 1 || pixel_bytes < 1 || height > INT_MAX || width > INT_MAX)
        return "height, width, planes and pixel_bytes must be >= 1 (and height, width < 2**31)";
    if (!product(height, width, &plane_bytes) || !product(plane_bytes, pixel_bytes, &plane_bytes) ||
        !product(plane_bytes, planes, &image_bytes) || image_bytes > (1LL << 48))
        return "an image of height x width x planes x pixel_bytes must be at most 2**48 bytes";
    if (target->source.len % image_bytes)
        return "source is not a whole number of images";
    if (target->fills.len % pixel_bytes || target->fills.len / pixel_bytes > 32)
        return "fills must be whole pixels, at most 32 pixels (they have a bad size)";
    target->image_bytes = target->out_image_bytes = image_bytes;
    if (out_kind != 0 || target->norm.len != 0) {
        const long long in_size = gl_value_size(in_kind);
        if (in_kind < GL_VALUE_U8 || in_kind > GL_VALUE_F64 ||
            (out_kind != GL_VALUE_F32 && out_kind != GL_VALUE_F16 && out_kind != GL_VALUE_BF16))
            return "in_kind must be a stored value kind and out_kind float32, float16 or bfloat16";
        if (pixel_bytes % in_size || (planes > 1 && pixel_bytes != in_size))
            return "pixel_bytes must be a whole number of in_kind values (one value when planes > 1)";
        const long long channels = planes > 1 ? planes : pixel_bytes / in_size;
        if (target->norm.len != 8 * channels)
            return "norm must hold a float32 (mean, scale) per channel";
        if (!aligned(&target->source, in_size) || !aligned(&target->out, gl_value_size(out_kind)))
            return "source and out must be aligned for their values";
        if (!product(image_bytes / in_size, gl_value_size(out_kind), &values))
            return "out's image size overflows";
        target->out_image_bytes = values;
    }
    if (target->out.len % target->out_image_bytes || target->out.len / target->out_image_bytes != n)
        return "out does not hold one image per row";
    target->n_images = target->source.len / image_bytes;
    return NULL;
}

/* A target's own work space (its fills, staging and copy; the traces and runs are `shared`'s); 0: no memory. */
static int target_work(Target *target, const Work *shared, long long width)
{
    Work *work = &target->work;
    const long long planes = target->planes, pixel_bytes = target->pixel_bytes;
    const long long plane_bytes = target->image_bytes / planes, fill_bytes = target->fills.len;
    *work = *shared;
    work->fill_rows = malloc(fill_bytes * width + 1);
    work->fill_values = malloc(fill_bytes + 8);
    work->end = (const unsigned char *)target->source.buf + target->source.len;
    work->image = plane_bytes <= GL_IMAGE_COPY_BYTES ? malloc(plane_bytes + GL_SLACK) : NULL;
    if (!work->fill_rows || !work->fill_values)
        return 0;
    memcpy(work->fill_values, target->fills.buf, fill_bytes);
    for (long long slot = 0; slot < fill_bytes / pixel_bytes; ++slot)
        for (long long col = 0; col < width; ++col)
            memcpy(work->fill_rows + (slot * width + col) * pixel_bytes,
                   (const unsigned char *)target->fills.buf + slot * pixel_bytes, pixel_bytes);
    if (target->out_kind != 0) {
        const long long in_size = gl_value_size(target->in_kind), pixel_values = pixel_bytes / in_size;
        const long long row_values = width * pixel_values;
        work->staged = malloc(target->image_bytes);
        work->means = malloc(sizeof(float) * planes * row_values);
        work->scales = malloc(sizeof(float) * planes * row_values);
        work->row = malloc(sizeof(float) * row_values);
        work->norm = malloc(target->norm.len);
        if (!work->staged || !work->means || !work->scales || !work->row || !work->norm)
            return 0;
        memcpy(work->norm, target->norm.buf, target->norm.len);
        for (long long plane = 0; plane < planes; ++plane)
            for (long long k = 0; k < row_values; ++k) {
                const long long channel = planes > 1 ? plane : k % pixel_values;
                work->means[plane * row_values + k] = work->norm[2 * channel];
                work->scales[plane * row_values + k] = work->norm[2 * channel + 1];
            }
    }
#ifdef GL_SHUFFLE
    if (pixel_bytes <= 8 && __builtin_cpu_supports("ssse3")) {
        const long long m = 16 / pixel_bytes;
        for (long long i = 0; i < 16; ++i)
            target->order[i] = (unsigned char)(i < m * pixel_bytes ? (m - 1 - i / pixel_bytes) * pixel_bytes +
                                                                         i % pixel_bytes
                                                                   : i);
        work->order = target->order;
    }
    /* one-byte pixels (a uint8 mask, a plane of a channels-first uint8 image): per-run calls cost the most there;
       on wider pixels sample_rows measured as fast or faster */
    target->shuffled = pixel_bytes == 1 && width % 16 == 0 && width <= GL_SHUFFLED_ROW_BYTES &&
                       __builtin_cpu_supports("ssse3");
    target->lookup = (width * pixel_bytes) % 16 == 0 && width * pixel_bytes <= GL_LOOKUP_ROW_BYTES &&
                     __builtin_cpu_supports("ssse3");
#endif
    return 1;
}

static void free_target_work(Target *target)
{
    Work *work = &target->work;
    free(work->fill_rows);
    free(work->fill_values);
    free(work->image);
    free(work->staged);
    free(work->means);
    free(work->scales);
    free(work->row);
    free(work->norm);
}

static void release_target(Target *target)
{
    PyBuffer_Release(&target->source);
    PyBuffer_Release(&target->out);
    PyBuffer_Release(&target->fills);
    PyBuffer_Release(&target->norm);
}

/* One sample's image of one target, from its source image `image` into `target_out`, with the shared traces. */
static void sample_target(const Target *target, long long height, long long width, int bytewise,
                          const unsigned char *image, unsigned char *target_out)
{
    const Work *work = &target->work;
    const long long planes = target->planes, pixel_bytes = target->pixel_bytes;
    const int normalize = target->out_kind != 0;
    const long long in_size = normalize ? gl_value_size(target->in_kind) : 1, pixel_values = pixel_bytes / in_size;
    if (bytewise) {
        if (normalize)
            gl_sample_values(0, 1, height, width, planes, pixel_values, target->in_kind, target->out_kind, image,
                             work->fill_values, work->norm, target->or_slots, target->and_slots, work->src_rows,
                             work->row_hits, work->src_cols, work->col_hits, target_out);
        else
            gl_sample_bytes(0, 1, height, width, planes, pixel_bytes, image, work->fill_values, target->or_slots,
                            target->and_slots, work->src_rows, work->row_hits, work->src_cols, work->col_hits,
                            target_out);
        return;
    }
    const long long plane_bytes = target->image_bytes / planes;
    unsigned char *traced = normalize ? work->staged : target_out;
#ifdef GL_SHUFFLE
    if (target->lookup)
        lookup_rows(height, width, pixel_bytes, planes, image, target->or_slots, target->and_slots, work, traced);
#endif
    for (long long plane = 0; !target->lookup && plane < planes; ++plane) {
#ifdef GL_SHUFFLE
        if (target->shuffled && shuffle_rows(height, width, pixel_bytes, image + plane * plane_bytes,
                                             target->or_slots, target->and_slots, work, traced + plane * plane_bytes))
            continue;
#endif
        sample_rows(height, width, pixel_bytes, image + plane * plane_bytes, target->or_slots, target->and_slots,
                    work, traced + plane * plane_bytes);
    }
    if (normalize)
        normalize_image(work, target->in_kind, target->out_kind, planes, height, width * pixel_values, in_size,
                        target_out);
}

/* The followers' arguments into targets[1:]; returns how many targets hold buffers (to release), -1 on an
 * error (set). */
static Py_ssize_t parse_followers(PyObject *sequence, Target *targets, Py_ssize_t count)
{
    for (Py_ssize_t i = 0; i < count; ++i) {
        PyObject *item = PySequence_Fast_GET_ITEM(sequence, i);
        Target *target = targets + 1 + i;
        if (!PyTuple_Check(item)) {
            PyErr_Format(PyExc_TypeError, "gather_augment: follower %zd must be a tuple (source, out, fills, "
                         "or_slots, and_slots, planes, pixel_bytes, in_kind, out_kind, norm), not %.80s.", i,
                         Py_TYPE(item)->tp_name);
            return -(1 + i);
        }
        if (!PyArg_ParseTuple(item, "y*w*y*IInniiy*;gather_augment: a follower is (source, out, fills, or_slots, "
                              "and_slots, planes, pixel_bytes, in_kind, out_kind, norm)", &target->source,
                              &target->out, &target->fills, &target->or_slots, &target->and_slots, &target->planes,
                              &target->pixel_bytes, &target->in_kind, &target->out_kind, &target->norm))
            return -(1 + i);
    }
    return 1 + count;
}

static PyObject *gather_augment(PyObject *module, PyObject *args)
{
    Py_buffer rows, ids, keys, ops;
    Py_ssize_t height, width;
    int bytewise;
    PyObject *followers = NULL, *sequence = NULL, *result = NULL;
    Target lead;
    memset(&lead, 0, sizeof(lead));
    (void)module;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*y*IInnnnw*piiy*|O", &lead.source, &rows, &ids, &keys, &ops, &lead.fills,
                          &lead.or_slots, &lead.and_slots, &height, &width, &lead.planes, &lead.pixel_bytes,
                          &lead.out, &bytewise, &lead.in_kind, &lead.out_kind, &lead.norm, &followers))
        return NULL;
    Work shared;
    memset(&shared, 0, sizeof(shared));
    unsigned long long *words = NULL;
    Py_ssize_t n_followers = 0, held = 1, prepared = 0;
    Target *targets = NULL;
    if (followers != NULL && followers != Py_None) {
        sequence = PySequence_Fast(followers, "gather_augment: followers must be a sequence of tuples");
        if (sequence == NULL)
            goto release_lead;
        n_followers = PySequence_Fast_GET_SIZE(sequence);
    }
    targets = calloc((size_t)n_followers + 1, sizeof(Target));
    if (targets == NULL) {
        PyErr_NoMemory();
        goto release_lead;
    }
    targets[0] = lead; /* its buffers are released through targets[0] from here on */
    held = parse_followers(sequence, targets, n_followers);
    if (held < 0) {
        held = -held;
        goto done;
    }
    const long long n = rows.len / 8, n_words = keys.len / 16, n_ops = ops.len / (8 * GL_OP_FIELDS);
    const long long *row_index = (const long long *)rows.buf;
    const char *problem = check_shared(&rows, &ids, &keys, &ops);
    Py_ssize_t failed = 0; /* the target a problem is about (0: the leader, or every target) */
    long long n_images = -1; /* the fewest images of any target's source */
    for (Py_ssize_t t = 0; problem == NULL && t < held; ++t) {
        Target *target = targets + t;
        problem = check_target(target, height, width, n);
        if (problem == NULL)
            problem = check_ops((const long long *)ops.buf, n_ops, n_words, height, width,
                                target->fills.len / target->pixel_bytes, target->or_slots, target->and_slots);
        if (problem != NULL)
            failed = t;
        else if (n_images < 0 || target->n_images < n_images)
            n_images = target->n_images;
    }
    for (long long b = 0; problem == NULL && b < n; ++b)
        if (row_index[b] < 0 || row_index[b] >= n_images)
            problem = "a row index is outside the source";
    if (problem != NULL) {
        if (failed > 0)
            PyErr_Format(PyExc_ValueError, "gather_augment: follower %zd: %s.", failed - 1, problem);
        else
            PyErr_Format(PyExc_ValueError, "gather_augment: %s.", problem);
        goto done;
    }
    shared.src_rows = malloc(sizeof(int) * height);
    shared.row_hits = malloc(sizeof(unsigned int) * height);
    shared.src_cols = malloc(sizeof(int) * width);
    shared.col_hits = malloc(sizeof(unsigned int) * width);
    shared.runs = malloc(sizeof(Run) * width);
    shared.spans = malloc(sizeof(Run) * width);
    words = malloc(sizeof(unsigned long long) * (n_words ? n_words : 1));
    int ready = shared.src_rows && shared.row_hits && shared.src_cols && shared.col_hits && shared.runs &&
                shared.spans && words;
    for (; ready && prepared < held; ++prepared)
        ready = target_work(targets + prepared, &shared, width);
    if (!ready) {
        PyErr_NoMemory();
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    const unsigned long long *sample_ids = (const unsigned long long *)ids.buf;
    for (long long b = 0; b < n; ++b) {
        /* the sample's words and traces once, then every target's pixels from them */
        gl_sample_words(0, 1, sample_ids[b], (const unsigned long long *)keys.buf, n_words, words);
        if (bytewise) {
            gl_sample_traces(0, 1, height, width, (const long long *)ops.buf, n_ops, words, shared.src_rows,
                             shared.row_hits, shared.src_cols, shared.col_hits);
        } else {
            host_trace_axis(0, height, (const long long *)ops.buf, n_ops, words, shared.src_rows, shared.row_hits);
            host_trace_axis(1, width, (const long long *)ops.buf, n_ops, words, shared.src_cols, shared.col_hits);
        }
        for (Py_ssize_t t = 0; t < held; ++t) {
            const Target *target = targets + t;
            if (b + GL_PREFETCH_AHEAD < n) /* a later sample's image on its way while this one is written */
                prefetch_image((const unsigned char *)target->source.buf +
                                   row_index[b + GL_PREFETCH_AHEAD] * target->image_bytes,
                               target->image_bytes);
            sample_target(target, height, width, bytewise,
                          (const unsigned char *)target->source.buf + row_index[b] * target->image_bytes,
                          (unsigned char *)target->out.buf + b * target->out_image_bytes);
        }
    }
    Py_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
done:
    for (Py_ssize_t t = 0; t < prepared; ++t)
        free_target_work(targets + t);
    for (Py_ssize_t t = 0; t < held; ++t)
        release_target(targets + t);
    free(targets);
    free(shared.src_rows);
    free(shared.row_hits);
    free(shared.src_cols);
    free(shared.col_hits);
    free(shared.runs);
    free(shared.spans);
    free(words);
    Py_XDECREF(sequence);
    PyBuffer_Release(&rows);
    PyBuffer_Release(&ids);
    PyBuffer_Release(&keys);
    PyBuffer_Release(&ops);
    return result;
release_lead:
    release_target(&lead);
    Py_XDECREF(sequence);
    PyBuffer_Release(&rows);
    PyBuffer_Release(&ids);
    PyBuffer_Release(&keys);
    PyBuffer_Release(&ops);
    return NULL;
}

static PyMethodDef methods[] = {
    {"gather_augment", gather_augment, METH_VARARGS,
     "gather_augment(source, rows, ids, keys, ops, fills, or_slots, and_slots, height, width, planes, pixel_bytes, "
     "out, bytewise, in_kind, out_kind, norm, followers=()): the augmented images of source[rows] into out, and "
     "of each follower's (source, out, fills, or_slots, and_slots, planes, pixel_bytes, in_kind, out_kind, norm) "
     "with the same draws and traces, in one pass; see gpuloader/augment/fused.py."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "gpuloader.augment._pixels",
                                    "The host kernel of the built-in augmentation ops (see _pixels.c).", -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__pixels(void)
{
    return PyModule_Create(&module);
}
