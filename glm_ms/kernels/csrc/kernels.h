// Shared pieces of glm_ms's CPU kernels: argument checks for MindSpore's AOT calling convention, the weight
// formats ("decoders") the matmul templates are written against, and the tile sizes.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define GLM_SIMD 1
#include <immintrin.h>
#else
#define GLM_SIMD 0
#endif
#if GLM_SIMD && defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#define GLM_AVX512 1
#else
#define GLM_AVX512 0
#endif

namespace glm {

// Return codes (MindSpore raises on anything but 0; the Python side checks everything first, these are a net).
constexpr int kOk = 0;
constexpr int kBadArity = 1;
constexpr int kBadDtype = 2;
constexpr int kBadShape = 3;

constexpr int64_t kRowBlock = 16;  // rows of x sharing one pass over the weights
constexpr int64_t kChunk = 8;      // weight rows per OpenMP work item

// One MindSpore AOT call: inputs then outputs in params, with their ranks, shapes and dtype names.
struct Call {
  int nparam;
  void **params;
  int *ndims;
  int64_t **shapes;
  const char **dtypes;

  bool dtype_is(int i, const char *name) const { return std::strcmp(dtypes[i], name) == 0; }
  int64_t dim(int i, int d) const { return shapes[i][d]; }
  int64_t last(int i) const { return shapes[i][ndims[i] - 1]; }
  int64_t leading(int i) const {  // product of every dimension but the last
    int64_t n = 1;
    for (int d = 0; d + 1 < ndims[i]; d++) n *= shapes[i][d];
    return n;
  }
  int64_t elements(int i) const {  // product of every dimension
    int64_t n = 1;
    for (int d = 0; d < ndims[i]; d++) n *= shapes[i][d];
    return n;
  }
  bool same_shape(int i, int j) const {
    if (ndims[i] != ndims[j]) return false;
    for (int d = 0; d < ndims[i]; d++)
      if (shapes[i][d] != shapes[j][d]) return false;
    return true;
  }
};

// IEEE binary16 -> binary32: F16C where built with it, else in software (the portable build), the same values.
inline float half_to_float(uint16_t h) {
#if GLM_SIMD
  return _cvtsh_ss(h);
#else
  const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1Fu;
  uint32_t mant = h & 0x3FFu;
  uint32_t bits;
  if (exp == 0x1Fu) {
    bits = sign | 0x7F800000u | (mant << 13);
  } else if (exp != 0) {
    bits = sign | ((exp + 112u) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;
  } else {  // subnormal half: normalise
    uint32_t e = 113u;
    while ((mant & 0x400u) == 0) {
      mant <<= 1;
      e--;
    }
    bits = sign | (e << 23) | ((mant & 0x3FFu) << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
#endif
}

// n binary16 values as binary32 into dst (8 at a time with F16C).
inline void halves_to_floats(const uint16_t *h, int64_t n, float *dst) {
  int64_t i = 0;
#if GLM_SIMD
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i))));
#endif
  for (; i < n; i++) dst[i] = half_to_float(h[i]);
}

// binary32 -> binary16, rounding to nearest even: F16C where built with it, else in software (the same values).
inline uint16_t float_to_half(float f) {
#if GLM_SIMD
  return _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT);
#else
  uint32_t x;
  std::memcpy(&x, &f, sizeof x);
  const uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
  const uint32_t a = x & 0x7FFFFFFFu;
  if (a >= 0x7F800000u) return sign | 0x7C00u | (a > 0x7F800000u ? 0x200u : 0u);  // inf, nan
  if (a >= 0x477FF000u) return sign | 0x7C00u;                                     // rounds past 65504
  if (a < 0x38800000u) {  // below 2^-14: a multiple of 2^-24, scaled exactly then rounded to nearest even
    float v;
    std::memcpy(&v, &a, sizeof v);
    return sign | (uint16_t)std::nearbyint(v * 16777216.0f);
  }
  uint32_t h = ((a >> 23) - 112u) << 10 | ((a & 0x7FFFFFu) >> 13);
  const uint32_t rest = a & 0x1FFFu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) h++;
  return sign | (uint16_t)h;
#endif
}

// Weight formats. A row of W is read in "streams": S = 1 for int8 and float16 (stream 0 = columns 0..K-1);
// S = 2 for int4, whose byte j holds column 2j (high nibble) and 2j+1 (low nibble): stream 0 = even columns,
// stream 1 = odd columns, matched by activations split the same way, so no nibble is ever shuffled.
struct Int8Rows {
  static constexpr int S = 1;
  const int8_t *w;
  int64_t row;  // bytes per row (= K)
  const void *address(int64_t n, int64_t j) const { return w + n * row + j; }
  static constexpr int64_t bytes(int64_t steps) { return steps; }
  float at(int64_t n, int64_t j, int) const { return (float)w[n * row + j]; }
  int32_t int_at(int64_t n, int64_t j, int) const { return w[n * row + j]; }
  int32_t int_col(int64_t n, int64_t k) const { return w[n * row + k]; }
#if GLM_SIMD
  void load8(int64_t n, int64_t j, __m256 *out) const {
    const __m128i b = _mm_loadl_epi64((const __m128i *)(w + n * row + j));
    out[0] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
  }
  void load16(int64_t n, int64_t j, __m256i *out) const {
    out[0] = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(w + n * row + j)));
  }
#endif
#if GLM_AVX512
  void load16f(int64_t n, int64_t j, __m512 *out) const {
    out[0] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(w + n * row + j))));
  }
  void load32(int64_t n, int64_t j, __m512i *out) const {
    out[0] = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(w + n * row + j)));
  }
#endif
};

struct Int4Rows {
  static constexpr int S = 2;
  const int8_t *w;
  int64_t row;  // bytes per row (= K / 2)
  const void *address(int64_t n, int64_t j) const { return w + n * row + j; }
  static constexpr int64_t bytes(int64_t steps) { return steps; }
  static int32_t hi(int8_t b) { return b >> 4; }                              // arithmetic shift
  static int32_t lo(int8_t b) { return (int8_t)((uint8_t)b << 4) >> 4; }
  float at(int64_t n, int64_t j, int s) const { return (float)int_at(n, j, s); }
  int32_t int_at(int64_t n, int64_t j, int s) const {
    const int8_t b = w[n * row + j];
    return s == 0 ? hi(b) : lo(b);
  }
  int32_t int_col(int64_t n, int64_t k) const { return int_at(n, k >> 1, (int)(k & 1)); }
#if GLM_SIMD
  void load8(int64_t n, int64_t j, __m256 *out) const {
    const __m256i v = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(w + n * row + j)));
    out[0] = _mm256_cvtepi32_ps(_mm256_srai_epi32(v, 4));
    out[1] = _mm256_cvtepi32_ps(_mm256_srai_epi32(_mm256_slli_epi32(v, 28), 28));
  }
  void load16(int64_t n, int64_t j, __m256i *out) const {
    const __m256i v = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(w + n * row + j)));
    out[0] = _mm256_srai_epi16(v, 4);
    out[1] = _mm256_srai_epi16(_mm256_slli_epi16(v, 12), 12);
  }
#endif
#if GLM_AVX512
  void load16f(int64_t n, int64_t j, __m512 *out) const {
    const __m512i v = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(w + n * row + j)));
    out[0] = _mm512_cvtepi32_ps(_mm512_srai_epi32(v, 4));
    out[1] = _mm512_cvtepi32_ps(_mm512_srai_epi32(_mm512_slli_epi32(v, 28), 28));
  }
  void load32(int64_t n, int64_t j, __m512i *out) const {
    const __m512i v = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(w + n * row + j)));
    out[0] = _mm512_srai_epi16(v, 4);
    out[1] = _mm512_srai_epi16(_mm512_slli_epi16(v, 12), 12);
  }
#endif
};

struct HalfRows {
  static constexpr int S = 1;
  const uint16_t *w;
  int64_t row;  // elements per row (= K)
  const void *address(int64_t n, int64_t j) const { return w + n * row + j; }
  static constexpr int64_t bytes(int64_t steps) { return 2 * steps; }
  float at(int64_t n, int64_t j, int) const { return half_to_float(w[n * row + j]); }
#if GLM_SIMD
  void load8(int64_t n, int64_t j, __m256 *out) const {
    out[0] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w + n * row + j)));
  }
#endif
#if GLM_AVX512
  void load16f(int64_t n, int64_t j, __m512 *out) const {
    out[0] = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(w + n * row + j)));
  }
#endif
};

// Weight rows are read one at a time, front to back, so each thread streams through memory in order (several
// rows side by side defeat the hardware prefetcher: each row is only a page or two long). Independent
// accumulators come from unrolling along K instead: U steps of 8 (or 16) per iteration, MR * S * U <= 8 of them.
template <int MR, int S>
constexpr int unroll() {
  return MR * S >= 8 ? 1 : 8 / (MR * S);
}

constexpr int64_t kPrefetchBytes = 4096;  // how far ahead of the loads a row is prefetched (measured best: 2-8 KiB)

template <class W>
inline void prefetch(const W &w, int64_t n, int64_t j, int64_t steps) {
#if GLM_SIMD
  const char *p = (const char *)w.address(n, j) + kPrefetchBytes;
  for (int64_t b = 0; b < W::bytes(steps); b += 64) _mm_prefetch(p + b, _MM_HINT_T0);
#else
  (void)w, (void)n, (void)j, (void)steps;
#endif
}

// Scale of row n as float32 (float16 storage).
inline float scale_at(const uint16_t *scale, int64_t n) { return half_to_float(scale[n]); }

// The float ends of a matmul call: x [..., K] and y [..., N], both float32 or both float16, and an optional bias
// [N], float32 or float16. The kernels multiply in float32; y = the float32 products + float32(bias), rounded
// once to y's dtype: the bits of Cast x · float32 product · Add float32(bias) · Cast, in one op.
struct FloatEnds {
  int x, bias, y;  // parameter indices; bias < 0: none

  // Checks the dtypes and that x and y have the same leading dimensions and bias [N]; sets M, K.
  int check(const Call &c, int64_t N, int64_t &M, int64_t &K) const {
    const bool half = c.dtype_is(x, "float16");
    if (!half && !c.dtype_is(x, "float32")) return kBadDtype;
    if (!c.dtype_is(y, half ? "float16" : "float32")) return kBadDtype;
    if (bias >= 0 && !c.dtype_is(bias, "float16") && !c.dtype_is(bias, "float32")) return kBadDtype;
    if (c.ndims[x] < 1 || c.ndims[y] != c.ndims[x]) return kBadShape;
    K = c.last(x);
    M = c.leading(x);
    if (c.last(y) != N || c.leading(y) != M) return kBadShape;
    if (bias >= 0 && (c.ndims[bias] != 1 || c.dim(bias, 0) != N)) return kBadShape;
    return kOk;
  }

  // x [M, K] as float32: the input itself, or converted into `buffer`.
  const float *input(const Call &c, int64_t count, std::vector<float> &buffer) const {
    if (c.dtype_is(x, "float32")) return (const float *)c.params[x];
    buffer.resize((size_t)count);
    halves_to_floats((const uint16_t *)c.params[x], count, buffer.data());
    return buffer.data();
  }

  // Where the float32 products go: y itself, or `buffer` when y is float16.
  float *products(const Call &c, int64_t count, std::vector<float> &buffer) const {
    if (c.dtype_is(y, "float32")) return (float *)c.params[y];
    buffer.resize((size_t)count);
    return buffer.data();
  }

  // y [M, N] = products + bias, rounded once to y's dtype (without a bias nothing is added: -0 stays -0).
  void finish(const Call &c, const float *products, int64_t M, int64_t N) const {
    const bool y_half = c.dtype_is(y, "float16");
    if (!y_half && bias < 0) return;  // products are y itself
    std::vector<float> b;
    if (bias >= 0) {
      b.resize((size_t)N);
      if (c.dtype_is(bias, "float16")) halves_to_floats((const uint16_t *)c.params[bias], N, b.data());
      else std::memcpy(b.data(), c.params[bias], (size_t)N * sizeof(float));
    }
    if (!y_half) {
      float *out = (float *)c.params[y];
      for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) out[m * N + n] += b[n];
      return;
    }
    uint16_t *out = (uint16_t *)c.params[y];
    for (int64_t m = 0; m < M; m++) {
      const float *row = products + m * N;
      uint16_t *dst = out + m * N;
      int64_t n = 0;
#if GLM_SIMD  // F16C rounds to nearest even, as float_to_half does
      for (; n + 8 <= N; n += 8) {
        __m256 v = _mm256_loadu_ps(row + n);
        if (!b.empty()) v = _mm256_add_ps(v, _mm256_loadu_ps(b.data() + n));
        _mm_storeu_si128((__m128i *)(dst + n), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
      }
#endif
      for (; n < N; n++) dst[n] = float_to_half(b.empty() ? row[n] : row[n] + b[n]);
    }
  }
};

}  // namespace glm
