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
                    coord = coord < 0 ? -coord : 2 * (size - 1) - coord;
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

/* Per sample, step 3, one byte at a time: the sample's `height x width x pixel_bytes` output bytes.
 * `source` is the sample's source image, `out` its output image. */
GL_FUNCTION void gl_sample_bytes(long long lane, long long lanes, long long height, long long width,
                                 long long pixel_bytes, const unsigned char *source, const unsigned char *fills,
                                 unsigned int or_slots, unsigned int and_slots, const int *src_rows,
                                 const unsigned int *row_hits, const int *src_cols, const unsigned int *col_hits,
                                 unsigned char *out)
{
    const long long total = height * width * pixel_bytes;
    for (long long i = lane; i < total; i += lanes) {
        const long long pixel = i / pixel_bytes, byte = i - pixel * pixel_bytes;
        const long long row = pixel / width, col = pixel - row * width;
        const unsigned int painted = gl_paint(row_hits[row], col_hits[col], or_slots, and_slots);
        out[i] = painted ? fills[GL_TOP_BIT(painted) * pixel_bytes + byte]
                         : source[((long long)src_rows[row] * width + src_cols[col]) * pixel_bytes + byte];
    }
}

#endif
