// MindSpore AOT entry points of the exact kernels: y[..., N] = x[..., K] . W[N, K]^T (+ bias[N]), x and y both
// float32 or both float16 (see FloatEnds: float32 arithmetic, one rounding), the bias optional.
//   glm_int8_matmul(x, w int8 [N, K], scale float16 [N][, bias]) -> y      W = float32(w) * float32(scale)
//   glm_int4_matmul(x, w int8 [N, K/2], scale float16 [N][, bias]) -> y    two int4 per byte, column 2j high
//   glm_half_matmul(x, w float16 [N, K][, bias]) -> y
#include "exact.h"

namespace glm {
namespace {

// Checks a call of `inputs` fixed inputs (x, w[, scale]) then an optional bias then y, with w [N, K / per_byte]
// of `wtype` and (when has_scale) scale float16 [N]; sets the float ends, M, K, N.
int check(const Call &c, int inputs, const char *wtype, int per_byte, bool has_scale, FloatEnds &ends,
          int64_t &M, int64_t &K, int64_t &N) {
  if (c.nparam != inputs + 1 && c.nparam != inputs + 2) return kBadArity;
  ends = FloatEnds{0, c.nparam == inputs + 2 ? inputs : -1, c.nparam - 1};
  const int w = 1;
  if (!c.dtype_is(w, wtype) || (has_scale && !c.dtype_is(2, "float16"))) return kBadDtype;
  if (c.ndims[w] != 2) return kBadShape;
  N = c.dim(w, 0);
  if (int rc = ends.check(c, N, M, K)) return rc;
  if (c.dim(w, 1) * per_byte != K) return kBadShape;
  if (has_scale && (c.ndims[2] != 1 || c.dim(2, 0) != N)) return kBadShape;
  return kOk;
}

template <class Run>
int entry(const Call &c, int inputs, const char *wtype, int per_byte, bool has_scale, Run run) {
  FloatEnds ends;
  int64_t M, K, N;
  if (int rc = check(c, inputs, wtype, per_byte, has_scale, ends, M, K, N)) return rc;
  std::vector<float> xb, yb;
  float *y = ends.products(c, M * N, yb);
  run(ends.input(c, M * K, xb), M, K, N, y);
  ends.finish(c, y, M, N);
  return kOk;
}

}  // namespace
}  // namespace glm

using namespace glm;

extern "C" int glm_int8_matmul(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                               void *, void *) {
  const Call c{nparam, params, ndims, shapes, dtypes};
  return entry(c, 3, "int8", 1, true, [&](const float *x, int64_t M, int64_t K, int64_t N, float *y) {
    exact_int8(x, (const int8_t *)params[1], (const uint16_t *)params[2], M, K, N, y);
  });
}

extern "C" int glm_int4_matmul(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                               void *, void *) {
  const Call c{nparam, params, ndims, shapes, dtypes};
  return entry(c, 3, "int8", 2, true, [&](const float *x, int64_t M, int64_t K, int64_t N, float *y) {
    exact_int4(x, (const int8_t *)params[1], (const uint16_t *)params[2], M, K, N, y);
  });
}

extern "C" int glm_half_matmul(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                               void *, void *) {
  const Call c{nparam, params, ndims, shapes, dtypes};
  return entry(c, 2, "float16", 1, false, [&](const float *x, int64_t M, int64_t K, int64_t N, float *y) {
    exact_matmul(HalfRows{(const uint16_t *)params[1], K}, x, M, K, N, y, nullptr);
  });
}
