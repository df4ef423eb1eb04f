/* gpuloader: the built-in augmentation ops traced per output coordinate.
 *
 * One text, compiled twice: by the C compiler into the host kernel
 * (gpuloader/augment/_pixels.c) and by NVRTC into the CUDA kernel
 * (gpuloader/_cuda.py prepends its qualifiers and includes this text). Only
 * plain C types, no headers, so both compilers take it as it is.
 *
 * The ops of one list, in list order, are a table of 4 integers each:
 *   kind, parameter (padding or size), first word (its offset in the sample's
 *   words), fill slot (for the ops that write a fill value, else -1).
 * A fill slot is a bit; slots are numbered in list order, so of two fills
 * that cover a pixel the later op's slot is the higher bit.
 *
 * An output pixel (row r, column c) of a sample is traced back through the
 * ops, last op first: a flip mirrors c, a crop shifts r and c (reflecting them
 * at the border, or marking its slot when they leave the image), a cutout
 * marks its slot when the coordinate is inside its square. Rows and columns
 * are traced apart (every op acts on each axis alone), each axis noting which
 * slots it meets. A constant crop paints a pixel when either axis left the
 * image; a cutout when both are inside its square. The pixel is the fill of
 * the highest painting slot (the last op that wrote it), else the source
 * pixel at the traced coordinates: the same bytes as applying the ops one by
 * one (gpuloader/augment/ops.py, the reference).
 *
 * The words: word t of a sample is mix(mix(id + add[t]) ^ xor[t]), the
 * SplitMix64 finaliser of gpuloader/permutation.py (gpuloader/augment/keyed.py).
 *
 * Data formats: a channels-last image is one plane of height x width pixels of
 * pixel_bytes (all its channels); a channels-first image is `planes` planes
 * (one per channel) of one-value pixels. Every plane is traced alike.
 *
 * Normalize (gpuloader/augment/normalize.py, whose docstring states the rounding
 * rule): each value of the traced image, read as float32, becomes
 * (x - mean[c]) * scale[c] in float32, rounded to the output kind.
 *
 * The codes below are also written in gpuloader/augment/fused.py (OP_CODES,
 * VALUE_KINDS); tests/test_augment_fused.py checks they agree.
 */
#ifndef GPULOADER_PIXELS_H
#define GPULOADER_PIXELS_H

#ifndef GL_FUNCTION
#define GL_FUNCTION static inline
#endif
#ifndef GL_TOP_BIT
#define GL_TOP_BIT(m) (31 - __builtin_clz(m))
#endif

#define GL_CROP_REFLECT 1
#define GL_CROP_CONSTANT 2
#define GL_FLIP 3
#define GL_CUTOUT 4
#define GL_OP_FIELDS 4

/* Value kinds: the stored images' element type (Normalize's input) and Normalize's output. */
#define GL_VALUE_U8 1
#define GL_VALUE_I8 2
#define GL_VALUE_U16 3
#define GL_VALUE_I16 4
#define GL_VALUE_U32 5
#define GL_VALUE_I32 6
#define GL_VALUE_U64 7
#define GL_VALUE_I64 8
#define GL_VALUE_F32 9
#define GL_VALUE_F64 10
#define GL_VALUE_F16 11
#define GL_VALUE_BF16 12

GL_FUNCTION unsigned long long gl_mix(unsigned long long value)
{
    value = (value ^ (value >> 30)) * 0xBF58476D1CE4E5B9ULL;
    value = (value ^ (value >> 27)) * 0x94D049BB133111EBULL;
    return value ^ (value >> 31);
}

/* keys: 2 per word (add, xor). */
GL_FUNCTION unsigned long long gl_word(unsigned long long id, const unsigned long long *keys, long long word)
{
    return gl_mix(gl_mix(id + keys[2 * word]) ^ keys[2 * word + 1]);
}

/* An integer in [0, high) from a word's top 32 bits (augment.integers). */
GL_FUNCTION long long gl_integer(unsigned long long word, long long high)
{
    return (long long)(((word >> 32) * (unsigned long long)high) >> 32);
}

/* A coordinate reflected once about the edges of [0, last] (-1 -> 1, last + 1 -> last - 1), in 64-bit
 * arithmetic: coordinates are below 2**31 but a shifted one and 2 * last are not. */
GL_FUNCTION long long gl_reflected(long long coord, long long last)
{
    coord = coord < 0 ? -coord : coord;
    return coord > last ? 2 * last - coord : coord;
}

/* Trace output coordinate `coord` of axis `axis` (0: rows, 1: columns; `size` pixels) back to the
 * source; *hits gets the slots this axis meets. */
GL_FUNCTION long long gl_trace(int axis, long long coord, long long size, const long long *ops, long long n_ops,
                               const unsigned long long *words, unsigned int *hits)
{
    unsigned int met = 0;
    for (long long j = n_ops - 1; j >= 0; --j) {
        const long long *op = ops + GL_OP_FIELDS * j;
        const long long kind = op[0], parameter = op[1];
        const unsigned long long *own = words + op[2];
        if (kind == GL_FLIP) {
            if (axis == 1 && (own[0] >> 63))
                coord = size - 1 - coord;
        } else if (kind == GL_CUTOUT) {
            const long long top = gl_integer(own[axis], size) - parameter / 2;
            if (coord >= top && coord < top + parameter)
                met |= 1u << op[3];
        } else { /* a crop: output pixel y reads padded pixel y + padding + dy */
            coord += gl_integer(own[axis], 2 * parameter + 1) - parameter;
            if (coord < 0 || coord >= size) {
                if (kind == GL_CROP_REFLECT) {
                    coord = gl_reflected(coord, size - 1);
                } else {
                    met |= 1u << op[3];
                    coord = coord < 0 ? 0 : size - 1;
                }
            }
        }
    }
    *hits = met;
    return coord;
}

/* The slots that paint a pixel whose row met `row_hits` and column `col_hits`. */
GL_FUNCTION unsigned int gl_paint(unsigned int row_hits, unsigned int col_hits, unsigned int or_slots,
                                  unsigned int and_slots)
{
    return ((row_hits | col_hits) & or_slots) | (row_hits & col_hits & and_slots);
}

/* float32 to float16's bits, to nearest, ties to even (as numpy.astype): overflow to infinity, subnormals
 * kept, a NaN quieted with its sign and the top of its payload. */
GL_FUNCTION unsigned int gl_half_bits(float value)
{
    union {
        float f;
        unsigned int u;
    } bits;
    bits.f = value;
    const unsigned int f = bits.u, sign = (f >> 16) & 0x8000u, exponent = (f >> 23) & 0xFFu, mantissa = f & 0x7FFFFFu;
    if (exponent == 0xFFu)
        return sign | 0x7C00u | (mantissa ? 0x200u | (mantissa >> 13) : 0u);
    if (exponent >= 143u) /* |value| >= 65536: infinity */
        return sign | 0x7C00u;
    unsigned int kept, shift;
    if (exponent >= 113u) { /* a normal half (or rounds up to infinity) */
        kept = ((exponent - 112u) << 10) | (mantissa >> 13);
        shift = 13u;
    } else if (exponent >= 102u) { /* a subnormal half: units of 2**-24 */
        const unsigned int significand = mantissa | 0x800000u;
        shift = 126u - exponent;
        kept = significand >> shift;
        const unsigned int rest = significand & ((1u << shift) - 1u), half = 1u << (shift - 1u);
        return sign | (kept + (rest > half || (rest == half && (kept & 1u))));
    } else {
        return sign; /* below 2**-25: zero */
    }
    const unsigned int rest = mantissa & ((1u << shift) - 1u), half = 1u << (shift - 1u);
    return sign | (kept + (rest > half || (rest == half && (kept & 1u))));
}

/* float32 to bfloat16's bits, to nearest, ties to even (as ml_dtypes); a NaN becomes 0x7FC0 with its sign. */
GL_FUNCTION unsigned int gl_bfloat_bits(float value)
{
    union {
        float f;
        unsigned int u;
    } bits;
    bits.f = value;
    const unsigned int f = bits.u;
    if ((f & 0x7F800000u) == 0x7F800000u && (f & 0x7FFFFFu))
        return (f & 0x80000000u) ? 0xFFC0u : 0x7FC0u;
    return (f + 0x7FFFu + ((f >> 16) & 1u)) >> 16;
}

/* The bytes of a value of `kind` (0 for an unknown kind). */
GL_FUNCTION long long gl_value_size(long long kind)
{
    switch (kind) {
    case GL_VALUE_U8: case GL_VALUE_I8: return 1;
    case GL_VALUE_U16: case GL_VALUE_I16: case GL_VALUE_F16: case GL_VALUE_BF16: return 2;
    case GL_VALUE_U32: case GL_VALUE_I32: case GL_VALUE_F32: return 4;
    case GL_VALUE_U64: case GL_VALUE_I64: case GL_VALUE_F64: return 8;
    default: return 0;
    }
}

/* Element `index` of an array of `kind` at `base` (aligned for it), as float32 (rounded to nearest even). */
GL_FUNCTION float gl_load(int kind, const unsigned char *base, long long index)
{
    switch (kind) {
    case GL_VALUE_U8: return (float)((const unsigned char *)base)[index];
    case GL_VALUE_I8: return (float)((const signed char *)base)[index];
    case GL_VALUE_U16: return (float)((const unsigned short *)base)[index];
    case GL_VALUE_I16: return (float)((const short *)base)[index];
    case GL_VALUE_U32: return (float)((const unsigned int *)base)[index];
    case GL_VALUE_I32: return (float)((const int *)base)[index];
    case GL_VALUE_U64: return (float)((const unsigned long long *)base)[index];
    case GL_VALUE_I64: return (float)((const long long *)base)[index];
    case GL_VALUE_F32: return ((const float *)base)[index];
    default: return (float)((const double *)base)[index];
    }
}

/* Store float32 `value` as element `index` of an array of `kind` (F32, F16 or BF16) at `base`. */
GL_FUNCTION void gl_store(int kind, unsigned char *base, long long index, float value)
{
    if (kind == GL_VALUE_F32)
        ((float *)base)[index] = value;
    else if (kind == GL_VALUE_F16)
        ((unsigned short *)base)[index] = (unsigned short)gl_half_bits(value);
    else
        ((unsigned short *)base)[index] = (unsigned short)gl_bfloat_bits(value);
}

/* Normalize's arithmetic (rule steps 2 and 3): two float32 operations, each rounded; no fused multiply-add. */
GL_FUNCTION float gl_normalized(float x, float mean, float scale)
{
    const float centred = x - mean;
    return centred * scale;
}

/* Per sample, step 1 (thread `lane` of `lanes`): its words. */
GL_FUNCTION void gl_sample_words(long long lane, long long lanes, unsigned long long id,
                                 const unsigned long long *keys, long long n_words, unsigned long long *words)
{
    for (long long t = lane; t < n_words; t += lanes)
        words[t] = gl_word(id, keys, t);
}

/* Per sample, step 2: the source row and slots of each output row, then of each column. */
GL_FUNCTION void gl_sample_traces(long long lane, long long lanes, long long height, long long width,
                                  const long long *ops, long long n_ops, const unsigned long long *words,
                                  int *src_rows, unsigned int *row_hits, int *src_cols, unsigned int *col_hits)
{
    for (long long i = lane; i < height + width; i += lanes) {
        if (i < height)
            src_rows[i] = (int)gl_trace(0, i, height, ops, n_ops, words, row_hits + i);
        else
            src_cols[i - height] = (int)gl_trace(1, i - height, width, ops, n_ops, words, col_hits + i - height);
    }
}

/* Per sample, step 3, one byte at a time: the sample's `planes x height x width x pixel_bytes` output bytes.
 * `source` is the sample's source image, `out` its output image. */
GL_FUNCTION void gl_sample_bytes(long long lane, long long lanes, long long height, long long width,
                                 long long planes, long long pixel_bytes, const unsigned char *source,
                                 const unsigned char *fills, unsigned int or_slots, unsigned int and_slots,
                                 const int *src_rows, const unsigned int *row_hits, const int *src_cols,
                                 const unsigned int *col_hits, unsigned char *out)
{
    const long long plane_bytes = height * width * pixel_bytes, total = planes * plane_bytes;
    for (long long i = lane; i < total; i += lanes) {
        const long long plane = i / plane_bytes, in_plane = i - plane * plane_bytes;
        const long long pixel = in_plane / pixel_bytes, byte = in_plane - pixel * pixel_bytes;
        const long long row = pixel / width, col = pixel - row * width;
        const unsigned int painted = gl_paint(row_hits[row], col_hits[col], or_slots, and_slots);
        out[i] = painted ? fills[GL_TOP_BIT(painted) * pixel_bytes + byte]
                         : source[plane * plane_bytes +
                                  ((long long)src_rows[row] * width + src_cols[col]) * pixel_bytes + byte];
    }
}

/* Per sample, step 3 with Normalize, one value at a time: value i of the output image is value i of the traced
 * image (`pixel_values` values of `in_kind` a pixel) normalized with its channel's (mean, scale) in `norm`. */
GL_FUNCTION void gl_sample_values(long long lane, long long lanes, long long height, long long width,
                                  long long planes, long long pixel_values, int in_kind, int out_kind,
                                  const unsigned char *source, const unsigned char *fills, const float *norm,
                                  unsigned int or_slots, unsigned int and_slots, const int *src_rows,
                                  const unsigned int *row_hits, const int *src_cols, const unsigned int *col_hits,
                                  unsigned char *out)
{
    const long long plane_values = height * width * pixel_values, total = planes * plane_values;
    for (long long i = lane; i < total; i += lanes) {
        const long long plane = i / plane_values, in_plane = i - plane * plane_values;
        const long long pixel = in_plane / pixel_values, value = in_plane - pixel * pixel_values;
        const long long row = pixel / width, col = pixel - row * width, channel = plane + value;
        const unsigned int painted = gl_paint(row_hits[row], col_hits[col], or_slots, and_slots);
        const float x = painted ? gl_load(in_kind, fills, GL_TOP_BIT(painted) * pixel_values + value)
                                : gl_load(in_kind, source,
                                          plane * plane_values +
                                              ((long long)src_rows[row] * width + src_cols[col]) * pixel_values +
                                              value);
        gl_store(out_kind, out, i, gl_normalized(x, norm[2 * channel], norm[2 * channel + 1]));
    }
}

#endif
