// Portable instantiation of the tile kernels: one float at a time, libm's expf. Used on CPUs
// without AVX2/FMA (and when SIMCLR_FAST_CPU_ISA=generic, which the tests use to cover it).
#include "tile_kernels.h"

namespace simclr_fast_tiles {
namespace {

struct VScalar {
  using vec = float;
  static constexpr int W = 1;

  static vec load(const float* p) { return *p; }
  static void store(float* p, vec v) { *p = v; }
  // With one lane there are no partial vectors; these exist so the templates compile.
  static vec loadn(const float* p, int) { return *p; }
  static void storen(float* p, vec v, int) { *p = v; }
  static vec keep(vec v, int, float) { return v; }
  static vec set1(float x) { return x; }
  static vec zero() { return 0.0f; }
  static vec add(vec a, vec b) { return a + b; }
  static vec sub(vec a, vec b) { return a - b; }
  static vec mul(vec a, vec b) { return a * b; }
  static vec max(vec a, vec b) { return a < b ? b : a; }
  // a·b ± c rounded once, as the AVX2 kernels' FMA does (the product of two floats is exact in
  // double): the exponents keep the precision of s − shift whichever kernels run.
  static vec fmadd(vec a, vec b, vec c) {
    return static_cast<float>(static_cast<double>(a) * b + c);
  }
  static vec fmsub(vec a, vec b, vec c) {
    return static_cast<float>(static_cast<double>(a) * b - c);
  }
  static float hsum(vec v) { return v; }
  static float hmax(vec v) { return v; }
  static vec exp(vec x) { return __builtin_expf(x); }
};

}  // namespace

const TileOps& tile_ops_generic() {
  static const TileOps ops = make_ops<VScalar>("generic");
  return ops;
}

}  // namespace simclr_fast_tiles
