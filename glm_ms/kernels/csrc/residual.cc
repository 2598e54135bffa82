// MindSpore AOT entry point of GLM's deep-norm residual, elementwise, in one pass instead of a Mul and an Add:
//   glm_scaled_add(x [...], y [...], alpha float32 [1]) -> x * alpha + y [...], x, y and the output all float32
//   or all float16
// Rounded as MindSpore's two ops round it, so the result is theirs bit for bit: in float16, alpha itself is
// rounded to float16 (as MindSpore's Mul of a float16 tensor by a Python float does), the product in float32 is
// rounded to float16, then the float32 sum; in float32, a product and a sum, no FMA contraction. MindSpore's
// float16 Mul and Add take ~0.17 ms each on the CPU for ChatGLM-6B's 4096 values.
#include "kernels.h"

namespace glm {
namespace {

__attribute__((optimize("fp-contract=off"))) void scaled_add(const float *x, const float *y, float alpha, float *out,
                                                             int64_t n) {
  for (int64_t i = 0; i < n; i++) out[i] = x[i] * alpha + y[i];
}

__attribute__((optimize("fp-contract=off"))) void scaled_add(const uint16_t *x, const uint16_t *y, float alpha,
                                                             uint16_t *out, int64_t n) {
  const float a = half_to_float(float_to_half(alpha));
  for (int64_t i = 0; i < n; i++) {
    const float product = half_to_float(float_to_half(half_to_float(x[i]) * a));
    out[i] = float_to_half(product + half_to_float(y[i]));
  }
}

}  // namespace
}  // namespace glm

using namespace glm;

extern "C" int glm_scaled_add(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *,
                              void *) {
  const Call c{nparam, params, ndims, shapes, dtypes};
  if (nparam != 4) return kBadArity;
  const bool half = c.dtype_is(0, "float16");
  if (!(half || c.dtype_is(0, "float32")) || !c.dtype_is(2, "float32")) return kBadDtype;
  if (std::strcmp(dtypes[0], dtypes[1]) != 0 || std::strcmp(dtypes[0], dtypes[3]) != 0) return kBadDtype;
  if (!c.same_shape(0, 1) || !c.same_shape(0, 3) || ndims[2] != 1 || c.dim(2, 0) != 1) return kBadShape;
  const int64_t n = c.elements(0);
  const float alpha = *(const float *)params[2];
  if (half)
    scaled_add((const uint16_t *)params[0], (const uint16_t *)params[1], alpha, (uint16_t *)params[3], n);
  else
    scaled_add((const float *)params[0], (const float *)params[1], alpha, (float *)params[3], n);
  return kOk;
}
