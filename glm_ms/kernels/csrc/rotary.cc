// MindSpore AOT entry point of ChatGLM-6B's attention input: the fused query/key/value output split per head,
// both halves of each head rotated (2D rotary), the query scaled, in one pass instead of ~18 MindSpore ops.
//   glm_rotary_2d(qkv [b, s, H * 3d], cos [b, s, 1, d], sin [b, s, 1, d], scale float32 [1])
//     -> q [b, H, s, d] (rotated, times scale), k [b, s, H, d] (rotated), v [b, s, H, d]
// qkv, cos, sin and the outputs are all float32 or all float16. Each product, sum and scaling is rounded to that
// dtype as MindSpore's separate ops round it (x·cos + rotate_half(x)·sin, then · scale), so the result is the
// ops path's bit for bit; hence no FMA contraction here.
#include <initializer_list>
#include <type_traits>

#include "kernels.h"

namespace glm {
namespace {

template <bool Half>
struct Values {
  using T = typename std::conditional<Half, uint16_t, float>::type;
  static float get(const T *p, int64_t i) {
    if constexpr (Half) return half_to_float(p[i]); else return p[i];
  }
  static float round(float v) {  // to the dtype's precision, as a MindSpore op's output is
    if constexpr (Half) return half_to_float(float_to_half(v)); else return v;
  }
  static void put(T *p, int64_t i, float v) {
    if constexpr (Half) p[i] = float_to_half(v); else p[i] = v;
  }
};

#if GLM_SIMD
// One quarter of a float16 head, 8 lanes at a time, with the scalar loop's roundings: F16C converts exactly and
// rounds to nearest even, as the software conversions do (the scalar loop would spend ~0.7 ms a token on them).
inline __m256 round_half(__m256 v) { return _mm256_cvtph_ps(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT)); }

__attribute__((optimize("fp-contract=off"))) void rotate_quarter_f16(const uint16_t *x, const uint16_t *partner,
                                                                      const uint16_t *c, const uint16_t *n,
                                                                      bool negate, bool scaled, __m256 scale,
                                                                      uint16_t *out, int64_t count) {
  const __m256 sign = _mm256_set1_ps(negate ? -0.0f : 0.0f);
  for (int64_t i = 0; i < count; i += 8) {
    const __m256 xv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + i)));
    const __m256 rv = _mm256_xor_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(partner + i))), sign);
    const __m256 cv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(c + i)));
    const __m256 nv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(n + i)));
    __m256 y = round_half(_mm256_add_ps(round_half(_mm256_mul_ps(xv, cv)), round_half(_mm256_mul_ps(rv, nv))));
    if (scaled) y = _mm256_mul_ps(y, scale);
    _mm_storeu_si128((__m128i *)(out + i), _mm256_cvtps_ph(y, _MM_FROUND_TO_NEAREST_INT));
  }
}
#endif

template <bool Half>
__attribute__((optimize("fp-contract=off"))) void rotary(void **params, int64_t B, int64_t S, int64_t H,
                                                          int64_t d) {
  using V = Values<Half>;
  using T = typename V::T;
  const T *qkv = (const T *)params[0], *cos = (const T *)params[1], *sin = (const T *)params[2];
  const float scale = V::round(((const float *)params[3])[0]);
  T *q = (T *)params[4], *k = (T *)params[5], *v = (T *)params[6];
  const int64_t quarter = d / 4;
  for (int64_t b = 0; b < B; b++)
    for (int64_t s = 0; s < S; s++) {
      const int64_t row = b * S + s;
      const T *c = cos + row * d, *n = sin + row * d;
      for (int64_t h = 0; h < H; h++) {
        const T *in = qkv + (row * H + h) * 3 * d;
        T *outs[2] = {q + ((b * H + h) * S + s) * d, k + (row * H + h) * d};
        for (int part = 0; part < 2; part++) {
          const T *x = in + part * d;
#if GLM_SIMD
          if constexpr (Half) {
            if (quarter % 8 == 0) {
              for (int64_t i = 0; i < d; i += quarter) {
                const bool even = (i / quarter) % 2 == 0;
                rotate_quarter_f16(x + i, x + (even ? i + quarter : i - quarter), c + i, n + i, even, part == 0,
                                   _mm256_set1_ps(scale), outs[part] + i, quarter);
              }
              continue;
            }
          }
#endif
          for (int64_t i = 0; i < d; i++) {
            // rotate_half within each half of the head: [-x1, x0, -x3, x2] for quarters x0..x3
            const bool even = (i / quarter) % 2 == 0;
            const float r = even ? -V::get(x, i + quarter) : V::get(x, i - quarter);
            float y = V::round(V::round(V::get(x, i) * V::get(c, i)) + V::round(r * V::get(n, i)));
            if (part == 0) y = y * scale;
            V::put(outs[part], i, y);
          }
        }
        std::memcpy(v + (row * H + h) * d, in + 2 * d, (size_t)d * sizeof(T));
      }
    }
}

}  // namespace
}  // namespace glm

using namespace glm;

extern "C" int glm_rotary_2d(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *,
                             void *) {
  const Call c{nparam, params, ndims, shapes, dtypes};
  if (nparam != 7) return kBadArity;
  const bool half = c.dtype_is(0, "float16");
  const char *type = half ? "float16" : "float32";
  for (int p : {0, 1, 2, 4, 5, 6})
    if (!c.dtype_is(p, type)) return kBadDtype;
  if (!c.dtype_is(3, "float32")) return kBadDtype;
  if (ndims[0] != 3 || ndims[1] != 4 || ndims[2] != 4 || ndims[3] != 1 || ndims[4] != 4 || ndims[5] != 4 ||
      ndims[6] != 4)
    return kBadShape;
  const int64_t B = c.dim(0, 0), S = c.dim(0, 1), d = c.dim(1, 3);
  if (d < 4 || d % 4 != 0 || c.dim(0, 2) % (3 * d) != 0 || c.dim(3, 0) != 1) return kBadShape;
  const int64_t H = c.dim(0, 2) / (3 * d);
  for (int p : {1, 2})
    if (c.dim(p, 0) != B || c.dim(p, 1) != S || c.dim(p, 2) != 1 || c.dim(p, 3) != d) return kBadShape;
  const int64_t q_shape[4] = {B, H, S, d}, kv_shape[4] = {B, S, H, d};
  for (int i = 0; i < 4; i++)
    if (c.dim(4, i) != q_shape[i] || c.dim(5, i) != kv_shape[i] || c.dim(6, i) != kv_shape[i]) return kBadShape;
  if (half)
    rotary<true>(params, B, S, H, d);
  else
    rotary<false>(params, B, S, H, d);
  return kOk;
}
