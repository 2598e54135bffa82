// Exact mode: y = x . (int * scale)^T in float32, with the weights decoded in registers and the per-row
// scale applied once to each dot product (the same value as dequantizing first, up to float32 rounding).
#pragma once

#include <algorithm>
#include <vector>

#include "kernels.h"

namespace glm {

#if GLM_SIMD
inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
#endif

// out[m] += sum over streams s and steps j in [j, end) of x[m][s][j] * W[n][s][j], for MR rows of x (row stride
// ldx, stream length kp) and weight row n.
template <class W, int MR>
void exact_tile(const W &w, const float *x, int64_t ldx, int64_t kp, int64_t n, int64_t j, int64_t end,
                float out[MR]) {
  constexpr int S = W::S;
#if GLM_AVX512
  {  // 16 steps at a time while they last (the weight decoded once for all rows); the AVX2 loops take the rest
    constexpr int U = unroll<MR, S>();
    __m512 acc[U][MR][S];
    for (int u = 0; u < U; u++)
      for (int m = 0; m < MR; m++)
        for (int s = 0; s < S; s++) acc[u][m][s] = _mm512_setzero_ps();
    for (; j + 16 * U <= end; j += 16 * U) {
      prefetch(w, n, j, 16 * U);
      for (int u = 0; u < U; u++) {
        __m512 wv[S];
        w.load16f(n, j + 16 * u, wv);
        for (int m = 0; m < MR; m++)
          for (int s = 0; s < S; s++)
            acc[u][m][s] = _mm512_fmadd_ps(_mm512_loadu_ps(x + m * ldx + s * kp + j + 16 * u), wv[s], acc[u][m][s]);
      }
    }
    for (int m = 0; m < MR; m++) {
      __m512 t = _mm512_setzero_ps();
      for (int u = 0; u < U; u++)
        for (int s = 0; s < S; s++) t = _mm512_add_ps(t, acc[u][m][s]);
      out[m] += _mm512_reduce_add_ps(t);
    }
  }
#endif
#if GLM_SIMD
  constexpr int U = unroll<MR, S>();
  __m256 acc[U][MR][S];
  for (int u = 0; u < U; u++)
    for (int m = 0; m < MR; m++)
      for (int s = 0; s < S; s++) acc[u][m][s] = _mm256_setzero_ps();
  for (; j + 8 * U <= end; j += 8 * U) {
    prefetch(w, n, j, 8 * U);
    for (int u = 0; u < U; u++) {
      __m256 wv[S];
      w.load8(n, j + 8 * u, wv);
      for (int m = 0; m < MR; m++)
        for (int s = 0; s < S; s++)
          acc[u][m][s] = _mm256_fmadd_ps(_mm256_loadu_ps(x + m * ldx + s * kp + j + 8 * u), wv[s], acc[u][m][s]);
    }
  }
  for (; j + 8 <= end; j += 8) {
    __m256 wv[S];
    w.load8(n, j, wv);
    for (int m = 0; m < MR; m++)
      for (int s = 0; s < S; s++)
        acc[0][m][s] = _mm256_fmadd_ps(_mm256_loadu_ps(x + m * ldx + s * kp + j), wv[s], acc[0][m][s]);
  }
  for (int m = 0; m < MR; m++) {
    __m256 t = _mm256_setzero_ps();
    for (int u = 0; u < U; u++)
      for (int s = 0; s < S; s++) t = _mm256_add_ps(t, acc[u][m][s]);
    out[m] += hsum(t);
  }
#endif
  for (; j < end; j++)
    for (int s = 0; s < S; s++) {
      const float wv = w.at(n, j, s);
      for (int m = 0; m < MR; m++) out[m] += x[m * ldx + s * kp + j] * wv;
    }
}

// Steps of K per block: with several rows of x, a block of them (all streams) stays in ~16 KiB of L1 while the
// chunk's weight rows go by, instead of coming from L2 for every weight row. One row of x is not blocked, so the
// weights stream through memory in order.
template <class W, int MR>
constexpr int64_t k_block() {
  return MR == 1 ? INT64_MAX : (16384 / (4 * MR * W::S)) / 64 * 64;
}

// Weight rows [n_begin, n_end) (at most kChunk) against MR rows of x; y rows have stride ldy; scale may be null
// (float16 W).
template <class W, int MR>
void exact_rows(const W &w, const float *x, int64_t ldx, int64_t kp, int64_t n_begin, int64_t n_end, float *y,
                int64_t ldy, const uint16_t *scale) {
  float out[kChunk][MR] = {};
  for (int64_t j = 0; j < kp; j += k_block<W, MR>()) {
    const int64_t end = j + std::min(k_block<W, MR>(), kp - j);
    for (int64_t n = n_begin; n < n_end; n++) exact_tile<W, MR>(w, x, ldx, kp, n, j, end, out[n - n_begin]);
  }
  for (int64_t n = n_begin; n < n_end; n++) {
    const float s = scale ? scale_at(scale, n) : 1.0f;
    for (int m = 0; m < MR; m++) y[m * ldy + n] = out[n - n_begin][m] * s;
  }
}

// y[M, N] for activations already laid out as W's streams (x: [M][S][kp]). Rows of x go in blocks of
// kRowBlock so that one pass over the weights serves the whole block; each thread owns whole weight chunks.
template <class W>
void exact_matmul(const W &w, const float *x, int64_t M, int64_t kp, int64_t N, float *y, const uint16_t *scale) {
  const int64_t ldx = W::S * kp;
  const int64_t chunks = (N + kChunk - 1) / kChunk;
  for (int64_t m0 = 0; m0 < M; m0 += kRowBlock) {
    const int64_t mb = std::min(kRowBlock, M - m0);
    const float *xb = x + m0 * ldx;
    float *yb = y + m0 * N;
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < chunks; c++) {
      const int64_t nb = c * kChunk, ne = std::min(N, nb + kChunk);
      int64_t m = 0;
      for (; m + 4 <= mb; m += 4) exact_rows<W, 4>(w, xb + m * ldx, ldx, kp, nb, ne, yb + m * N, N, scale);
      switch (mb - m) {
        case 3: exact_rows<W, 3>(w, xb + m * ldx, ldx, kp, nb, ne, yb + m * N, N, scale); break;
        case 2: exact_rows<W, 2>(w, xb + m * ldx, ldx, kp, nb, ne, yb + m * N, N, scale); break;
        case 1: exact_rows<W, 1>(w, xb + m * ldx, ldx, kp, nb, ne, yb + m * N, N, scale); break;
        default: break;
      }
    }
  }
}

// int4 activations: x [M][K] -> [M][2][K/2] (even columns, then odd columns) to match Int4Rows' streams.
inline std::vector<float> split_even_odd(const float *x, int64_t M, int64_t K) {
  const int64_t half = K / 2;
  std::vector<float> out((size_t)(M * K));
  for (int64_t m = 0; m < M; m++)
    for (int64_t j = 0; j < half; j++) {
      out[m * K + j] = x[m * K + 2 * j];
      out[m * K + half + j] = x[m * K + 2 * j + 1];
    }
  return out;
}

inline void exact_int8(const float *x, const int8_t *w, const uint16_t *scale, int64_t M, int64_t K, int64_t N,
                       float *y) {
  exact_matmul(Int8Rows{w, K}, x, M, K, N, y, scale);
}

inline void exact_int4(const float *x, const int8_t *w, const uint16_t *scale, int64_t M, int64_t K, int64_t N,
                       float *y) {
  const std::vector<float> xs = split_even_odd(x, M, K);
  exact_matmul(Int4Rows{w, K / 2}, xs.data(), M, K / 2, N, y, scale);
}

}  // namespace glm
