// Attention over a slot-major static cache, read where it lies (no copy of the slots into heads-major order):
//   glm_cached_attention(q [b, g, R, d], keys [C, b, g, d], values [C, b, g, d], mask bool [b, 1, s, W],
//                        scale float32 [2]) -> out float32 [b, g, R, d]
// q and the cache are both float32 or both float16; R = r * s rows per key/value group, head-major (row i is
// query position i % s); of slots 0..W-1 (W <= C) none after the last one a row sees is read. scale = (layer
// scale, masked score): a score is q.k * scale[0], or scale[1] where the mask is set, then softmax over the W
// slots and the weighted sum of values, all in float32 (the same values as glm_ms.cells.attention's MindSpore
// path, up to float32 rounding).
//
// A decode step or a short piece (R <= kMaxRows) splits the work by slots (and groups, when there are few slot
// blocks): the keys (or values) of one slot, every group, are contiguous, so each thread reads its blocks of slots
// front to back; the weighted sums are per-thread partial sums, added up at the end. A prompt chunk (more rows)
// splits it by blocks of kQueryBlock rows, each going over the slots a block at a time with a running softmax
// (flash attention's rule): memory is O(rows * d) whatever W, no scores of rows x W are ever held.
#include <algorithm>
#include <cmath>
#include <vector>

#include <omp.h>

#include "exact.h"  // hsum

namespace glm {
namespace {

constexpr int64_t kSlotBlock = 64;  // slots per work item (their values, one group, 32 KiB of float32 at d = 128)
constexpr int64_t kMaxRows = 64;    // R up to which the work is split by slots (decode steps, short pieces)
constexpr int64_t kItemsPerThread = 4;  // work items per thread wanted in a decode step (see glm_cached_attention)
constexpr int64_t kQueryBlock = 64;   // rows per work item of a longer piece (their float32 sums: 32 KiB at d = 128)

struct Shapes {
  int64_t b, g, R, d, C, s, W;  // W: slots read (see seen_width)
  int64_t mw;  // mask row width: the W the caller passed
  int64_t ld;  // row stride of the scores: W padded so that rows do not share L1 sets (W = 2^n aliases)
};

// n float32 or float16 elements as float32 into dst.
inline void to_float(const void *p, bool half, int64_t n, float *dst) {
  if (!half) {
    std::memcpy(dst, p, (size_t)n * 4);
    return;
  }
  halves_to_floats((const uint16_t *)p, n, dst);
}

// n elements as float32: float32 ones where they lie, float16 ones converted into tmp.
inline const float *as_float(const void *p, bool half, int64_t n, float *tmp) {
  if (!half) return (const float *)p;
  to_float(p, true, n, tmp);
  return tmp;
}

// out[u] = q[u] . k for N <= 4 rows of q (stride d): one pass over the key serves them all. N is a template
// argument so that the accumulators stay in registers.
template <int N>
inline void dot_rows(const float *q, int64_t d, const float *k, float *out) {
  constexpr int n = N;
  int64_t c = 0;
  float sum[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#if GLM_SIMD
  __m256 acc[4][2];
  for (int i = 0; i < 4; i++) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
  for (; c + 16 <= d; c += 16) {  // two accumulators per row: one row alone is not bound by the FMA latency
    const __m256 k0 = _mm256_loadu_ps(k + c), k1 = _mm256_loadu_ps(k + c + 8);
    for (int i = 0; i < n; i++) {
      acc[i][0] = _mm256_fmadd_ps(_mm256_loadu_ps(q + i * d + c), k0, acc[i][0]);
      acc[i][1] = _mm256_fmadd_ps(_mm256_loadu_ps(q + i * d + c + 8), k1, acc[i][1]);
    }
  }
  for (; c + 8 <= d; c += 8) {
    const __m256 k0 = _mm256_loadu_ps(k + c);
    for (int i = 0; i < n; i++) acc[i][0] = _mm256_fmadd_ps(_mm256_loadu_ps(q + i * d + c), k0, acc[i][0]);
  }
  for (int i = 0; i < n; i++) sum[i] = hsum(_mm256_add_ps(acc[i][0], acc[i][1]));
#endif
  for (; c < d; c++)
    for (int i = 0; i < n; i++) sum[i] += q[i * d + c] * k[c];
  for (int i = 0; i < n; i++) out[i] = sum[i];
}

// dot_rows for n = 1..4 rows.
inline void dot_upto4(int n, const float *q, int64_t d, const float *k, float *out) {
  switch (n) {
    case 4: dot_rows<4>(q, d, k, out); break;
    case 3: dot_rows<3>(q, d, k, out); break;
    case 2: dot_rows<2>(q, d, k, out); break;
    default: dot_rows<1>(q, d, k, out); break;
  }
}

// Work items of a decode step or short piece: slots j0..j1-1 of groups g0..g1-1 of batch row bi.
struct SlotItem {
  int64_t bi, j0, j1, g0, g1;
};

// Scores [b, g, R, W] of an item's slots and groups, masked ones set to `masked`.
void score_slots(const Shapes &t, const float *q, const char *keys, size_t esize, bool half, const uint8_t *mask,
                 float layer_scale, float masked, const SlotItem &it, float *scores, float *tmp) {
  const int64_t bi = it.bi, j0 = it.j0, j1 = it.j1;
  for (int64_t j = j0; j < j1; j++)
    for (int64_t gi = it.g0; gi < it.g1; gi++) {
      const float *k = as_float(keys + (((j * t.b + bi) * t.g + gi) * t.d) * esize, half, t.d, tmp);
      const int64_t bg = bi * t.g + gi;
      float out[4];
      for (int64_t i = 0; i < t.R; i += 4) {
        const int n = (int)std::min<int64_t>(4, t.R - i);
        const float *qi = q + (bg * t.R + i) * t.d;
        dot_upto4(n, qi, t.d, k, out);
        for (int u = 0; u < n; u++) scores[(bg * t.R + i + u) * t.ld + j] = out[u] * layer_scale;
      }
    }
  for (int64_t gi = it.g0; gi < it.g1; gi++)
    for (int64_t i = 0; i < t.R; i++) {  // row i is query position i % s
      const uint8_t *m = mask + (bi * t.s + i % t.s) * t.mw;
      float *row = scores + ((bi * t.g + gi) * t.R + i) * t.ld;
      for (int64_t j = j0; j < j1; j++)
        if (m[j]) row[j] = masked;
    }
}

#if GLM_SIMD
// exp(x) for x <= 0 in float32 (Cephes' expf polynomial, within ~2 ulp), 8 at a time.
inline __m256 exp8(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  x = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}
#endif

// row[j] -> exp(row[j] - top) in place; returns their sum.
float exp_shifted(float *row, int64_t n, float top) {
  float total = 0.0f;
  int64_t j = 0;
#if GLM_SIMD
  __m256 acc = _mm256_setzero_ps();
  const __m256 p = _mm256_set1_ps(top);
  for (; j + 8 <= n; j += 8) {
    const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(row + j), p));
    _mm256_storeu_ps(row + j, e);
    acc = _mm256_add_ps(acc, e);
  }
  total = hsum(acc);
#endif
  for (; j < n; j++) total += (row[j] = std::exp(row[j] - top));
  return total;
}

// A row of scores -> exp(score - max) in place; returns 1 / sum.
float softmax_row(float *row, int64_t n) {
  float peak = row[0];
  for (int64_t j = 1; j < n; j++) peak = std::max(peak, row[j]);
  return 1.0f / exp_shifted(row, n, peak);
}

// acc[u][c] += sum over slots j of p[u * ldp + j] * v[j * ldv + c] for N <= 3 rows (acc row stride d), `slots`
// slots, 32 columns: 3 rows x 32 columns is 12 accumulators in registers.
template <int N>
inline void weigh_rows(const float *p, int64_t ldp, const float *v, int64_t ldv, int64_t d, int64_t slots,
                       float *acc) {
  constexpr int n = N;
#if GLM_SIMD
  __m256 a[3][4];
  for (int i = 0; i < n; i++)
    for (int x = 0; x < 4; x++) a[i][x] = _mm256_loadu_ps(acc + i * d + 8 * x);
  for (int64_t j = 0; j < slots; j++) {
    const float *vj = v + j * ldv;
    const __m256 v0 = _mm256_loadu_ps(vj), v1 = _mm256_loadu_ps(vj + 8), v2 = _mm256_loadu_ps(vj + 16),
                 v3 = _mm256_loadu_ps(vj + 24);
    for (int i = 0; i < n; i++) {
      const __m256 w = _mm256_broadcast_ss(p + i * ldp + j);
      a[i][0] = _mm256_fmadd_ps(w, v0, a[i][0]);
      a[i][1] = _mm256_fmadd_ps(w, v1, a[i][1]);
      a[i][2] = _mm256_fmadd_ps(w, v2, a[i][2]);
      a[i][3] = _mm256_fmadd_ps(w, v3, a[i][3]);
    }
  }
  for (int i = 0; i < n; i++)
    for (int x = 0; x < 4; x++) _mm256_storeu_ps(acc + i * d + 8 * x, a[i][x]);
#else
  for (int64_t j = 0; j < slots; j++)
    for (int i = 0; i < n; i++)
      for (int x = 0; x < 32; x++) acc[i * d + x] += p[i * ldp + j] * v[j * ldv + x];
#endif
}

// acc[i][c] += sum over slots j of p[i * ldp + j] * v[j * ldv + c], for `rows` rows (acc row stride d) and
// `slots` slots: weigh_rows over row triples and 32-column tiles, then the columns past the last multiple of 32.
void weigh(const float *p, int64_t ldp, const float *v, int64_t ldv, int64_t d, int64_t slots, int64_t rows,
           float *acc) {
  const int64_t cols = d / 32 * 32;
  for (int64_t i = 0; i < rows; i += 3) {
    const int n = (int)std::min<int64_t>(3, rows - i);
    const float *pi = p + i * ldp;
    for (int64_t c = 0; c < cols; c += 32) {
      float *ai = acc + i * d + c;
      switch (n) {
        case 3: weigh_rows<3>(pi, ldp, v + c, ldv, d, slots, ai); break;
        case 2: weigh_rows<2>(pi, ldp, v + c, ldv, d, slots, ai); break;
        default: weigh_rows<1>(pi, ldp, v + c, ldv, d, slots, ai); break;
      }
    }
    for (int u = 0; u < n; u++)
      for (int64_t j = 0; j < slots; j++)
        for (int64_t c = cols; c < d; c++) acc[(i + u) * d + c] += pi[u * ldp + j] * v[j * ldv + c];
  }
}

// partial[b, g, R, d] += probs of an item's slots and groups times their values: float32 values read where they
// lie (slot stride b * g * d), float16 ones converted one group's block at a time into tmp.
void weigh_slots(const Shapes &t, const float *probs, const char *values, size_t esize, bool half, const SlotItem &it,
                 float *partial, float *tmp) {
  const int64_t bi = it.bi, j0 = it.j0, j1 = it.j1;
  for (int64_t gi = it.g0; gi < it.g1; gi++) {
    const char *first = values + (((j0 * t.b + bi) * t.g + gi) * t.d) * esize;
    const float *v = (const float *)first;
    int64_t ldv = t.b * t.g * t.d;
    if (half) {
      for (int64_t j = j0; j < j1; j++) to_float(first + (j - j0) * ldv * esize, true, t.d, tmp + (j - j0) * t.d);
      v = tmp;
      ldv = t.d;
    }
    const int64_t bg = bi * t.g + gi;
    weigh(probs + bg * t.R * t.ld + j0, t.ld, v, ldv, t.d, j1 - j0, t.R, partial + bg * t.R * t.d);
  }
}


// Rows i0..i1-1 of group gi, batch row bi, over slots 0..W-1 a block at a time (a running softmax): out[i] = the
// softmax-weighted values of row i. scores holds kQueryBlock x kSlotBlock floats, keys/values kSlotBlock x d each
// (float16 blocks are converted there; float32 ones are read where they lie).
void attend_rows(const Shapes &t, const float *q, const char *keys, const char *values, size_t esize, bool half,
                 const uint8_t *mask, float layer_scale, float masked, int64_t bi, int64_t gi, int64_t i0, int64_t i1,
                 float *out, float *scores, float *kbuf, float *vbuf, float *peak, float *total) {
  const int64_t bg = bi * t.g + gi, n = i1 - i0, ldc = t.b * t.g * t.d;  // ldc: slot stride in the cache
  float *acc = out + (bg * t.R + i0) * t.d;
  std::fill(acc, acc + n * t.d, 0.0f);
  std::fill(peak, peak + n, -INFINITY);
  std::fill(total, total + n, 0.0f);
  for (int64_t j0 = 0; j0 < t.W; j0 += kSlotBlock) {
    const int64_t m = std::min(kSlotBlock, t.W - j0);
    const char *kfirst = keys + ((j0 * t.b + bi) * t.g + gi) * t.d * esize;
    const char *vfirst = values + ((j0 * t.b + bi) * t.g + gi) * t.d * esize;
    const float *k = (const float *)kfirst, *v = (const float *)vfirst;
    int64_t ldk = ldc;
    if (half) {
      for (int64_t j = 0; j < m; j++) {
        to_float(kfirst + j * ldc * esize, true, t.d, kbuf + j * t.d);
        to_float(vfirst + j * ldc * esize, true, t.d, vbuf + j * t.d);
      }
      k = kbuf, v = vbuf, ldk = t.d;
    }
    for (int64_t i = 0; i < n; i += 4) {  // a quad of query rows stays in L1 while the block's keys go by
      const int u = (int)std::min<int64_t>(4, n - i);
      const float *qi = q + (bg * t.R + i0 + i) * t.d;
      float dots[4];
      for (int64_t j = 0; j < m; j++) {
        dot_upto4(u, qi, t.d, k + j * ldk, dots);
        for (int x = 0; x < u; x++) scores[(i + x) * kSlotBlock + j] = dots[x] * layer_scale;
      }
    }
    for (int64_t i = 0; i < n; i++) {
      const uint8_t *mrow = mask + (bi * t.s + (i0 + i) % t.s) * t.mw + j0;  // row i is query position i % s
      float *row = scores + i * kSlotBlock;
      float top = peak[i];
      for (int64_t j = 0; j < m; j++) {
        if (mrow[j]) row[j] = masked;
        top = std::max(top, row[j]);
      }
      // A higher peak rescales what was summed so far by exp(old peak - new peak).
      const float fade = std::exp(peak[i] - top);
      peak[i] = top;
      total[i] = total[i] * fade + exp_shifted(row, m, top);
      if (fade != 1.0f)
        for (int64_t c = 0; c < t.d; c++) acc[i * t.d + c] *= fade;
    }
    weigh(scores, kSlotBlock, v, half ? t.d : ldc, t.d, m, n, acc);
  }
  for (int64_t i = 0; i < n; i++) {
    const float inverse = 1.0f / total[i];
    for (int64_t c = 0; c < t.d; c++) acc[i * t.d + c] *= inverse;
  }
}

// 1 + the last slot any of the `rows` mask rows (width w) sees, or w when none sees one. The slots after it are
// masked for every row: each adds exp(masked - peak) = 0 to the sums (masked is -10000 times the layer scale,
// hundreds below any seen score, so its exp underflows). They are left unread, so a step over a long bucketed
// prefix costs what the slots in use cost.
int64_t seen_width(const uint8_t *mask, int64_t rows, int64_t w) {
  int64_t seen = 0;
  for (int64_t r = 0; r < rows; r++) {
    const uint8_t *m = mask + r * w;
    for (int64_t j = w - 1; j >= seen; j--)
      if (!m[j]) {
        seen = j + 1;
        break;
      }
  }
  return seen > 0 ? seen : w;
}

}  // namespace
}  // namespace glm

using namespace glm;

extern "C" int glm_cached_attention(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                    void *, void *) {
  const Call c{nparam, params, ndims, shapes, dtypes};
  if (nparam != 6) return kBadArity;
  const bool half = c.dtype_is(0, "float16");
  const char *cache_type = half ? "float16" : "float32";
  if (!(half || c.dtype_is(0, "float32")) || !c.dtype_is(1, cache_type) || !c.dtype_is(2, cache_type) ||
      !c.dtype_is(3, "bool") || !c.dtype_is(4, "float32") || !c.dtype_is(5, "float32"))
    return kBadDtype;
  if (ndims[0] != 4 || ndims[1] != 4 || ndims[2] != 4 || ndims[3] != 4 || ndims[4] != 1 || ndims[5] != 4)
    return kBadShape;
  Shapes t{c.dim(0, 0), c.dim(0, 1), c.dim(0, 2), c.dim(0, 3), c.dim(1, 0), c.dim(3, 2), c.dim(3, 3), c.dim(3, 3), 0};
  for (int p : {1, 2})
    if (c.dim(p, 1) != t.b || c.dim(p, 2) != t.g || c.dim(p, 3) != t.d) return kBadShape;
  if (c.dim(3, 0) != t.b || c.dim(3, 1) != 1 || t.W < 1 || t.W > t.C || t.s < 1 || t.R % t.s != 0 ||
      c.dim(4, 0) != 2)
    return kBadShape;
  for (int d = 0; d < 4; d++)
    if (c.dim(5, d) != c.dim(0, d)) return kBadShape;
  t.W = seen_width((const uint8_t *)params[3], t.b * t.s, t.mw);
  t.ld = (t.W + 15) / 16 * 16 + 16;
  const size_t esize = half ? 2 : 4;
  const float layer_scale = ((const float *)params[4])[0], masked = ((const float *)params[4])[1];
  const int64_t rows = t.b * t.g * t.R, blocks = (t.W + kSlotBlock - 1) / kSlotBlock;
  float *out = (float *)params[5];
  const float *q = (const float *)params[0];
  std::vector<float> qf;
  if (half) {
    qf.resize((size_t)(rows * t.d));
    to_float(params[0], true, rows * t.d, qf.data());
    q = qf.data();
  }
  if (t.R > kMaxRows) {
    const int64_t row_blocks = (t.R + kQueryBlock - 1) / kQueryBlock;
#pragma omp parallel
    {
      std::vector<float> scores((size_t)(kQueryBlock * kSlotBlock)), kbuf((size_t)(kSlotBlock * t.d)),
          vbuf((size_t)(kSlotBlock * t.d)), peak((size_t)kQueryBlock), total((size_t)kQueryBlock);
#pragma omp for schedule(dynamic)
      for (int64_t item = 0; item < t.b * t.g * row_blocks; item++) {
        const int64_t i0 = (item % row_blocks) * kQueryBlock, bg = item / row_blocks;
        attend_rows(t, q, (const char *)params[1], (const char *)params[2], esize, half, (const uint8_t *)params[3],
                    layer_scale, masked, bg / t.g, bg % t.g, i0, std::min(t.R, i0 + kQueryBlock), out, scores.data(),
                    kbuf.data(), vbuf.data(), peak.data(), total.data());
      }
    }
    return kOk;
  }
  std::vector<float> scores((size_t)(rows * t.ld)), inverse((size_t)rows);
  // A step's few slot blocks (one for the first 64 tokens) are split by groups too, so that every thread has
  // items: about kItemsPerThread each.
  const int64_t wanted = kItemsPerThread * omp_get_max_threads();
  const int64_t chunks = std::min(t.g, std::max<int64_t>(1, (wanted + t.b * blocks - 1) / (t.b * blocks)));
  const int64_t per_chunk = (t.g + chunks - 1) / chunks;
  std::vector<SlotItem> items;
  for (int64_t bi = 0; bi < t.b; bi++)
    for (int64_t j0 = 0; j0 < t.W; j0 += kSlotBlock)
      for (int64_t g0 = 0; g0 < t.g; g0 += per_chunk)
        items.push_back({bi, j0, std::min(t.W, j0 + kSlotBlock), g0, std::min(t.g, g0 + per_chunk)});
  const int64_t n_items = (int64_t)items.size();
  // One partial sum per thread, added in thread order: the same inputs give the same bits on every call.
  std::vector<float> partials;
#pragma omp parallel
  {
    std::vector<float> block((size_t)(kSlotBlock * t.d));
#pragma omp single
    partials.assign((size_t)(omp_get_num_threads() * rows * t.d), 0.0f);
#pragma omp for schedule(static)
    for (int64_t i = 0; i < n_items; i++)
      score_slots(t, q, (const char *)params[1], esize, half, (const uint8_t *)params[3], layer_scale, masked,
                  items[i], scores.data(), block.data());
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; r++) inverse[r] = softmax_row(scores.data() + r * t.ld, t.W);
    float *partial = partials.data() + omp_get_thread_num() * rows * t.d;
#pragma omp for schedule(static)
    for (int64_t i = 0; i < n_items; i++)
      weigh_slots(t, scores.data(), (const char *)params[2], esize, half, items[i], partial, block.data());
    const int threads = omp_get_num_threads();
#pragma omp for schedule(static)
    for (int64_t x = 0; x < rows * t.d; x++) {
      float sum = 0.0f;
      for (int th = 0; th < threads; th++) sum += partials[(size_t)(th * rows * t.d + x)];
      out[x] = sum * inverse[x / t.d];
    }
  }
  return kOk;
}
