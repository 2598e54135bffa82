// Fast mode (in the spirit of LLM.int8()): each row of x is rounded to int16 with its own scale and multiplied
// with the integer weights exactly (int32 multiply-adds, int64 sums); input columns holding an outlier
// (|x| > threshold, or not finite, in any row) are left out of the int16 copy and added in float32 instead.
// The rounding error of an element is at most max|x_row| / 65534, hence |y_fast - y_exact| per output is at most
// scale[n] * sum_k |w[n, k]| * max|x_row over non-outlier columns| / 65534 (plus float32 rounding).
//   glm_int8_matmul_fast(x, w int8 [N, K], scale float16 [N], threshold float32 [1][, bias]) -> y
//   glm_int4_matmul_fast(x, w int8 [N, K/2], scale float16 [N], threshold float32 [1][, bias]) -> y
// x, y and the bias as for the exact kernels (FloatEnds).
#include <algorithm>
#include <vector>

#include "exact.h"

namespace glm {
namespace {

constexpr int64_t kIntBlock = 2048;  // steps summed in int32 lanes: 2048/16 * 2*128*32767 < 2^31 for int8
                                     // (a 512-bit lane sums half as many)
constexpr float kQMax = 32767.0f;

// x as W's streams in int16 ([M][S][kp], outlier columns zero), each row's scale, and the outliers themselves.
struct Quantized {
  std::vector<int16_t> q;
  std::vector<float> row_scale;  // x[m, k] ~ q[m, k] * row_scale[m]
  std::vector<int64_t> cols;     // outlier columns, ascending
  std::vector<float> outliers;   // [M][cols.size()]
  // At the avx512 level only: q = 256 * hi + lo in bytes (hi signed, lo unsigned), laid out as q, and what
  // flipping the weights' top bit adds to each row's dot products over the steps byte_dots covers.
  std::vector<int8_t> hi;
  std::vector<uint8_t> lo;
  std::vector<int64_t> byte_bias;
};

#if GLM_SIMD
inline __m256 abs8(__m256 v) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), v); }
#endif

std::vector<int64_t> outlier_columns(const float *x, int64_t M, int64_t K, float threshold) {
  std::vector<int64_t> cols;
  auto check = [&](int64_t k) {
    for (int64_t m = 0; m < M; m++)
      if (!(std::fabs(x[m * K + k]) <= threshold)) {  // NaN and inf count as outliers: they stay float
        cols.push_back(k);
        return;
      }
  };
  int64_t k = 0;
#if GLM_SIMD
  const __m256 limit = _mm256_set1_ps(threshold);
  for (; k + 8 <= K; k += 8) {
    int inside = 0xFF;  // columns k..k+7 with |x| <= threshold in every row (a NaN compares false)
    for (int64_t m = 0; m < M && inside == 0xFF; m++)
      inside &= _mm256_movemask_ps(_mm256_cmp_ps(abs8(_mm256_loadu_ps(x + m * K + k)), limit, _CMP_LE_OQ));
    if (inside != 0xFF)
      for (int64_t c = k; c < k + 8; c++) check(c);
  }
#endif
  for (; k < K; k++) check(k);
  return cols;
}

// max |row[k]| over the columns not marked in `outlier` (all of them when it is null).
float abs_max(const float *row, int64_t K, const char *outlier) {
  float amax = 0.0f;
  int64_t k = 0;
#if GLM_SIMD
  if (!outlier) {  // every value finite (a non-finite one is an outlier): the max is the same in any order
    __m256 acc = _mm256_setzero_ps();
    for (; k + 8 <= K; k += 8) acc = _mm256_max_ps(acc, abs8(_mm256_loadu_ps(row + k)));
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, acc);
    for (float v : lanes) amax = std::max(amax, v);
  }
#endif
  for (; k < K; k++)
    if (!outlier || !outlier[k]) amax = std::max(amax, std::fabs(row[k]));
  return amax;
}

void quantize_rows(const float *x, int64_t M, int64_t K, int S, Quantized &p) {
  const int64_t kp = K / S, nc = (int64_t)p.cols.size();
  std::vector<char> outlier(nc ? (size_t)K : 0, 0);
  for (int64_t c : p.cols) outlier[c] = 1;
  const char *marked = nc ? outlier.data() : nullptr;
  p.q.assign((size_t)(M * K), 0);
  p.row_scale.assign((size_t)M, 0.0f);
  p.outliers.assign((size_t)(M * nc), 0.0f);
  for (int64_t m = 0; m < M; m++) {
    const float *row = x + m * K;
    const float amax = abs_max(row, K, marked);
    const float inv = amax > 0.0f ? kQMax / amax : 0.0f;
    p.row_scale[m] = amax / kQMax;
    int16_t *q = p.q.data() + m * K;
    for (int64_t j = 0; j < kp; j++)  // column k = j * S + s goes to stream s, step j
      for (int s = 0; s < S; s++) {
        const int64_t k = j * S + s;
        if (marked && marked[k]) continue;
        q[s * kp + j] = (int16_t)std::min(kQMax, std::max(-kQMax, std::nearbyint(row[k] * inv)));
      }
    for (int64_t i = 0; i < nc; i++) p.outliers[m * nc + i] = row[p.cols[i]];
  }
}

#if GLM_AVX512
constexpr int64_t kByteStep = 64;  // steps per byte product: one 512-bit load of weight bytes

// Fills p.hi, p.lo and p.byte_bias from p.q for weights W (see byte_dots).
template <class W>
void split_bytes(int64_t M, int64_t kp, Quantized &p) {
  const int64_t n = (int64_t)p.q.size(), covered = kp - kp % kByteStep;
  p.hi.resize((size_t)n);
  p.lo.resize((size_t)n);
  for (int64_t i = 0; i < n; i++) {
    p.hi[i] = (int8_t)(p.q[i] >> 8);  // arithmetic shift: q = 256 * hi + lo exactly
    p.lo[i] = (uint8_t)(p.q[i] & 0xFF);
  }
  p.byte_bias.assign((size_t)M, 0);
  for (int64_t m = 0; m < M; m++)
    for (int s = 0; s < W::S; s++)
      for (int64_t j = 0; j < covered; j++) {
        const int64_t i = (m * W::S + s) * kp + j;
        p.byte_bias[m] += W::S == 2 ? 8 * (int64_t)p.q[i] : 32768 * (int64_t)p.hi[i];
      }
}
#endif

#if GLM_SIMD
inline int64_t hsum_i32(__m256i v) {
  const __m256i wide = _mm256_add_epi64(_mm256_cvtepi32_epi64(_mm256_castsi256_si128(v)),
                                        _mm256_cvtepi32_epi64(_mm256_extracti128_si256(v, 1)));
  alignas(32) int64_t lanes[4];
  _mm256_store_si256((__m256i *)lanes, wide);
  return lanes[0] + lanes[1] + lanes[2] + lanes[3];
}
#endif

#if GLM_AVX512
// Byte products (VNNI vpdpbusd multiplies unsigned by signed bytes) with q = 256 * hi + lo, hi signed and lo
// unsigned, and u = w with its top bit flipped (w + 8 in 0..15 for a nibble, w + 128 for a byte):
//   int4: w * q = u * hi * 256 + lo * u - 8 * q         (u fits a signed byte too)
//   int8: w * q = u * hi * 256 + lo * w - 32768 * hi
// The integers are the same as madd's, without widening the weights to int16: half the work per weight where a
// core, not memory, is the limit. Adds the dot products of steps [0, returned) to out and returns how many steps
// that was (whole kByteSteps).
template <class W, int MR>
int64_t byte_dots(const W &w, const Quantized &p, int64_t m0, int64_t kp, int64_t n, int64_t out[MR]) {
  constexpr int S = W::S, U = 2 * MR * S >= 8 ? 1 : 8 / (2 * MR * S);  // independent accumulators: 2 * MR * S * U
  const int64_t ldq = S * kp, covered = kp - kp % kByteStep;
  const __m512i flip = _mm512_set1_epi8((char)(S == 2 ? 0x88 : 0x80)), nibble = _mm512_set1_epi8(0x0F);
  // Sums per block stay in int32: a lane adds at most 4 * 255 * 128 per step of 64 bytes.
  int64_t j = 0;
  while (j < covered) {
    const int64_t end = std::min(covered, j + kIntBlock);
    __m512i high[U][MR][S], low[U][MR][S];
    for (int u = 0; u < U; u++)
      for (int m = 0; m < MR; m++)
        for (int s = 0; s < S; s++) high[u][m][s] = low[u][m][s] = _mm512_setzero_si512();
    auto step = [&](int u, int64_t at) {
      const __m512i v = _mm512_loadu_si512(w.address(n, at)), flipped = _mm512_xor_si512(v, flip);
      __m512i unsig[S], sig[S];  // the weights as the unsigned and as the signed operand
      if constexpr (S == 2) {
        unsig[0] = sig[0] = _mm512_and_si512(_mm512_srli_epi16(flipped, 4), nibble);
        unsig[1] = sig[1] = _mm512_and_si512(flipped, nibble);
      } else {
        unsig[0] = flipped;
        sig[0] = v;
      }
      for (int m = 0; m < MR; m++)
        for (int s = 0; s < S; s++) {
          const int64_t at_q = (m0 + m) * ldq + s * kp + at;
          high[u][m][s] = _mm512_dpbusd_epi32(high[u][m][s], unsig[s], _mm512_loadu_si512(p.hi.data() + at_q));
          low[u][m][s] = _mm512_dpbusd_epi32(low[u][m][s], _mm512_loadu_si512(p.lo.data() + at_q), sig[s]);
        }
    };
    for (; j + kByteStep * U <= end; j += kByteStep * U) {
      prefetch(w, n, j, kByteStep * U);
      for (int u = 0; u < U; u++) step(u, j + kByteStep * u);
    }
    for (; j < end; j += kByteStep) step(0, j);
    for (int u = 0; u < U; u++)
      for (int m = 0; m < MR; m++)
        for (int s = 0; s < S; s++)
          out[m] += 256 * (int64_t)_mm512_reduce_add_epi32(high[u][m][s]) + _mm512_reduce_add_epi32(low[u][m][s]);
  }
  for (int m = 0; m < MR; m++) out[m] -= p.byte_bias[m0 + m];
  return covered;
}
#endif

// out[m] = exact integer dot product of q rows m0 + m and weight row n.
template <class W, int MR>
void fast_tile(const W &w, const Quantized &p, int64_t m0, int64_t kp, int64_t n, int64_t out[MR]) {
  constexpr int S = W::S;
  const int64_t ldq = S * kp;
  const int16_t *q = p.q.data() + m0 * ldq;
  for (int m = 0; m < MR; m++) out[m] = 0;
  int64_t j = 0;
#if GLM_AVX512
  j = byte_dots<W, MR>(w, p, m0, kp, n, out);
#endif
#if GLM_SIMD
  constexpr int U = unroll<MR, S>();
  const int64_t kp16 = kp - kp % 16;
  while (j < kp16) {
    const int64_t end = std::min(kp16, j + kIntBlock);
#if GLM_AVX512
    {  // 32 steps at a time, multiply-add-accumulate in one VNNI instruction; the AVX2 loops take the rest
      __m512i acc[U][MR][S];
      for (int u = 0; u < U; u++)
        for (int m = 0; m < MR; m++)
          for (int s = 0; s < S; s++) acc[u][m][s] = _mm512_setzero_si512();
      for (; j + 32 * U <= end; j += 32 * U) {
        prefetch(w, n, j, 32 * U);
        for (int u = 0; u < U; u++) {
          __m512i wv[S];
          w.load32(n, j + 32 * u, wv);
          for (int m = 0; m < MR; m++)
            for (int s = 0; s < S; s++) {
              const __m512i xv = _mm512_loadu_si512((const void *)(q + m * ldq + s * kp + j + 32 * u));
              acc[u][m][s] = _mm512_dpwssd_epi32(acc[u][m][s], wv[s], xv);
            }
        }
      }
      for (int u = 0; u < U; u++)
        for (int m = 0; m < MR; m++)
          for (int s = 0; s < S; s++)
            out[m] += _mm512_reduce_add_epi64(_mm512_add_epi64(
                _mm512_cvtepi32_epi64(_mm512_castsi512_si256(acc[u][m][s])),
                _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(acc[u][m][s], 1))));
    }
#endif
    __m256i acc[U][MR][S];
    for (int u = 0; u < U; u++)
      for (int m = 0; m < MR; m++)
        for (int s = 0; s < S; s++) acc[u][m][s] = _mm256_setzero_si256();
    for (; j + 16 * U <= end; j += 16 * U) {
      prefetch(w, n, j, 16 * U);
      for (int u = 0; u < U; u++) {
        __m256i wv[S];
        w.load16(n, j + 16 * u, wv);
        for (int m = 0; m < MR; m++)
          for (int s = 0; s < S; s++) {
            const __m256i xv = _mm256_loadu_si256((const __m256i *)(q + m * ldq + s * kp + j + 16 * u));
            acc[u][m][s] = _mm256_add_epi32(acc[u][m][s], _mm256_madd_epi16(wv[s], xv));
          }
      }
    }
    for (; j < end; j += 16) {
      __m256i wv[S];
      w.load16(n, j, wv);
      for (int m = 0; m < MR; m++)
        for (int s = 0; s < S; s++) {
          const __m256i xv = _mm256_loadu_si256((const __m256i *)(q + m * ldq + s * kp + j));
          acc[0][m][s] = _mm256_add_epi32(acc[0][m][s], _mm256_madd_epi16(wv[s], xv));
        }
    }
    for (int u = 0; u < U; u++)
      for (int m = 0; m < MR; m++)
        for (int s = 0; s < S; s++) out[m] += hsum_i32(acc[u][m][s]);
  }
#endif
  for (; j < kp; j++)
    for (int s = 0; s < S; s++) {
      const int64_t wv = w.int_at(n, j, s);
      for (int m = 0; m < MR; m++) out[m] += wv * q[m * ldq + s * kp + j];
    }
}

// y rows for weight rows [nb, ne) and MR activation rows starting at row m (absolute).
template <class W, int MR>
void fast_rows(const W &w, const Quantized &p, int64_t m, int64_t kp, int64_t nb, int64_t ne, int64_t N,
               const uint16_t *scale, float *y) {
  const int64_t nc = (int64_t)p.cols.size();
  int64_t dots[MR];
  for (int64_t n = nb; n < ne; n++) {
    fast_tile<W, MR>(w, p, m, kp, n, dots);
    for (int i = 0; i < MR; i++) {
      const float *xo = p.outliers.data() + (m + i) * nc;
      double sum = (double)dots[i] * p.row_scale[m + i];
      for (int64_t c = 0; c < nc; c++) sum += (double)xo[c] * w.int_col(n, p.cols[c]);
      y[(m + i) * N + n] = (float)sum * scale_at(scale, n);
    }
  }
}

template <class W>
void fast_matmul(const W &w, const Quantized &p, int64_t M, int64_t kp, int64_t N, const uint16_t *scale, float *y) {
  const int64_t chunks = (N + kChunk - 1) / kChunk;
  for (int64_t m0 = 0; m0 < M; m0 += kRowBlock) {
    const int64_t mb = std::min(kRowBlock, M - m0);
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < chunks; c++) {
      const int64_t nb = c * kChunk, ne = std::min(N, nb + kChunk);
      int64_t m = m0;
      for (; m + 4 <= m0 + mb; m += 4) fast_rows<W, 4>(w, p, m, kp, nb, ne, N, scale, y);
      switch (m0 + mb - m) {
        case 3: fast_rows<W, 3>(w, p, m, kp, nb, ne, N, scale, y); break;
        case 2: fast_rows<W, 2>(w, p, m, kp, nb, ne, N, scale, y); break;
        case 1: fast_rows<W, 1>(w, p, m, kp, nb, ne, N, scale, y); break;
        default: break;
      }
    }
  }
}

// Shared checks and dispatch (x, w, scale, threshold[, bias] -> y): more than a quarter of the columns being
// outliers leaves nothing to gain, so such inputs take the exact path.
template <class W>
int fast_entry(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes) {
  const Call c{nparam, params, ndims, shapes, dtypes};
  if (nparam != 5 && nparam != 6) return kBadArity;
  const FloatEnds ends{0, nparam == 6 ? 4 : -1, nparam - 1};
  if (!c.dtype_is(1, "int8") || !c.dtype_is(2, "float16") || !c.dtype_is(3, "float32")) return kBadDtype;
  if (c.ndims[1] != 2 || c.ndims[2] != 1) return kBadShape;
  const int64_t N = c.dim(1, 0);
  int64_t M, K;
  if (int rc = ends.check(c, N, M, K)) return rc;
  if (c.dim(1, 1) * W::S != K || c.dim(2, 0) != N || c.leading(3) * c.last(3) != 1) return kBadShape;
  std::vector<float> xb, yb;
  const float *x = ends.input(c, M * K, xb);
  float *y = ends.products(c, M * N, yb);
  const int8_t *wq = (const int8_t *)params[1];
  const uint16_t *scale = (const uint16_t *)params[2];
  const float threshold = *(const float *)params[3];
  Quantized p;
  p.cols = outlier_columns(x, M, K, threshold);
  if ((int64_t)p.cols.size() * 4 > K) {
    if (W::S == 1) exact_int8(x, wq, scale, M, K, N, y);
    else exact_int4(x, wq, scale, M, K, N, y);
  } else {
    quantize_rows(x, M, K, W::S, p);
#if GLM_AVX512
    split_bytes<W>(M, K / W::S, p);
#endif
    fast_matmul(W{wq, K / W::S}, p, M, K / W::S, N, scale, y);
  }
  ends.finish(c, y, M, N);
  return kOk;
}

}  // namespace
}  // namespace glm

extern "C" int glm_int8_matmul_fast(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                    void *, void *) {
  return glm::fast_entry<glm::Int8Rows>(nparam, params, ndims, shapes, dtypes);
}

extern "C" int glm_int4_matmul_fast(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                    void *, void *) {
  return glm::fast_entry<glm::Int4Rows>(nparam, params, ndims, shapes, dtypes);
}
