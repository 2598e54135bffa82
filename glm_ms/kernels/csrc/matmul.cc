// MindSpore AOT entry points of the exact kernels: y[..., N] = x[..., K] . W[N, K]^T, x and y float32.
//   glm_int8_matmul(x, w int8 [N, K], scale float16 [N]) -> y      W = float32(w) * float32(scale)
//   glm_int4_matmul(x, w int8 [N, K/2], scale float16 [N]) -> y    two int4 per byte, column 2j high nibble
//   glm_half_matmul(x, w float16 [N, K]) -> y
#include "exact.h"

namespace glm {
namespace {

// Checks x [..., K] float32, y [..., N] float32 with the same leading dims, w [N, K / per_byte] of `wtype`,
// and (when has_scale) scale float16 [N]; sets M, K, N.
int check(const Call &c, int nparam, const char *wtype, int per_byte, bool has_scale, int64_t &M, int64_t &K,
          int64_t &N) {
  if (c.nparam != nparam) return kBadArity;
  const int x = 0, w = 1, y = nparam - 1;
  if (!c.dtype_is(x, "float32") || !c.dtype_is(w, wtype) || !c.dtype_is(y, "float32")) return kBadDtype;
  if (has_scale && !c.dtype_is(2, "float16")) return kBadDtype;
  if (c.ndims[x] < 1 || c.ndims[w] != 2 || c.ndims[y] != c.ndims[x]) return kBadShape;
  K = c.last(x);
  M = c.leading(x);
  N = c.dim(w, 0);
  if (c.dim(w, 1) * per_byte != K || c.last(y) != N || c.leading(y) != M) return kBadShape;
  if (has_scale && (c.ndims[2] != 1 || c.dim(2, 0) != N)) return kBadShape;
  return kOk;
}

}  // namespace
}  // namespace glm

using namespace glm;

extern "C" int glm_int8_matmul(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                               void *, void *) {
  const Call c{nparam, params, ndims, shapes, dtypes};
  int64_t M, K, N;
  if (int rc = check(c, 4, "int8", 1, true, M, K, N)) return rc;
  exact_int8((const float *)params[0], (const int8_t *)params[1], (const uint16_t *)params[2], M, K, N,
             (float *)params[3]);
  return kOk;
}

extern "C" int glm_int4_matmul(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                               void *, void *) {
  const Call c{nparam, params, ndims, shapes, dtypes};
  int64_t M, K, N;
  if (int rc = check(c, 4, "int8", 2, true, M, K, N)) return rc;
  exact_int4((const float *)params[0], (const int8_t *)params[1], (const uint16_t *)params[2], M, K, N,
             (float *)params[3]);
  return kOk;
}

extern "C" int glm_half_matmul(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                               void *, void *) {
  const Call c{nparam, params, ndims, shapes, dtypes};
  int64_t M, K, N;
  if (int rc = check(c, 3, "float16", 1, false, M, K, N)) return rc;
  exact_matmul(HalfRows{(const uint16_t *)params[1], K}, (const float *)params[0], M, K, N, (float *)params[2],
               nullptr);
  return kOk;
}
