// AVX2 + FMA instantiation of the tile kernels, used when the CPU reports both at run time
// (ntxent.cpp: __builtin_cpu_supports). The whole translation unit is compiled for AVX2 through
// the pragma below while the rest of the extension keeps the baseline x86-64 flags of setup.py,
// so the wheel still loads and runs (on the generic path) on CPUs without AVX2. This file must
// include nothing but intrinsics and our own headers (see tile_kernels.h).
#if defined(__x86_64__) || defined(_M_X64)
#pragma GCC target("avx2,fma")
#include <immintrin.h>

#include "tile_kernels.h"

namespace simclr_fast_tiles {
namespace {

struct VAvx2 {
  using vec = __m256;
  static constexpr int W = 8;

  static vec load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, vec v) { _mm256_storeu_ps(p, v); }
  static __m256i lanes_below(int m) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(m), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  // Partial vectors (0 < m < 8 lanes): masked loads never touch memory past lane m.
  static vec loadn(const float* p, int m) { return _mm256_maskload_ps(p, lanes_below(m)); }
  static void storen(float* p, vec v, int m) { _mm256_maskstore_ps(p, lanes_below(m), v); }
  static vec keep(vec v, int m, float fill) {
    return _mm256_blendv_ps(_mm256_set1_ps(fill), v, _mm256_castsi256_ps(lanes_below(m)));
  }
  static vec set1(float x) { return _mm256_set1_ps(x); }
  static vec zero() { return _mm256_setzero_ps(); }
  static vec add(vec a, vec b) { return _mm256_add_ps(a, b); }
  static vec sub(vec a, vec b) { return _mm256_sub_ps(a, b); }
  static vec mul(vec a, vec b) { return _mm256_mul_ps(a, b); }
  static vec max(vec a, vec b) { return _mm256_max_ps(a, b); }
  static vec fmadd(vec a, vec b, vec c) { return _mm256_fmadd_ps(a, b, c); }
  static vec fmsub(vec a, vec b, vec c) { return _mm256_fmsub_ps(a, b, c); }
  static float hsum(vec v) {
    __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    x = _mm_add_ss(x, _mm_movehdup_ps(x));
    return _mm_cvtss_f32(x);
  }
  static float hmax(vec v) {
    __m128 x = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_max_ps(x, _mm_movehl_ps(x, x));
    x = _mm_max_ss(x, _mm_movehdup_ps(x));
    return _mm_cvtss_f32(x);
  }

  // e^x for 8 floats: x = n·ln2 + r with |r| <= ln2/2, e^r by its Taylor polynomial to degree 7
  // (truncation error |r|^8/8! < 5.3e-9, under one fp32 ulp), times 2^n built in the exponent
  // bits. x < -87.33 (where 2^n would leave the normal range) gives 0; x is clamped at 88 above
  // (callers only pass x <= ~0). NaN stays NaN: max/min return their second operand on NaN.
  static vec exp(vec x) {
    const vec lo = _mm256_set1_ps(-87.33654475f);
    const vec under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    x = _mm256_min_ps(_mm256_set1_ps(88.0f), _mm256_max_ps(lo, x));
    const vec n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    // ln 2 split in two so that n · LN2_HI is exact for |n| <= 128.
    vec r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440054690583e-4f), r);
    vec p = _mm256_set1_ps(1.0f / 5040.0f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_andnot_ps(under, _mm256_mul_ps(p, _mm256_castsi256_ps(bits)));
  }
};

}  // namespace

const TileOps& tile_ops_avx2() {
  static const TileOps ops = make_ops<VAvx2>("avx2");
  return ops;
}

}  // namespace simclr_fast_tiles

#else  // not x86-64: only the generic kernels exist
#include "tile_api.h"
namespace simclr_fast_tiles {
const TileOps& tile_ops_avx2() { return tile_ops_generic(); }
}  // namespace simclr_fast_tiles
#endif
