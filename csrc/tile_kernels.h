// Elementwise work on one similarity tile, written once over a small SIMD interface `V`.
//
// Included by exactly two translation units, each instantiating it for one instruction set:
// tile_avx2.cpp (AVX2 + FMA, selected at run time) and tile_generic.cpp (baseline x86-64 / any
// CPU). Everything here has internal linkage (anonymous namespace) and uses no standard-library
// templates, so the AVX2 copy can never be picked by the linker for code that runs on a CPU
// without AVX2. Do not include torch or std headers here.
//
// A tile holds raw dot products S[r][j] = z_r · z_j (row-major, leading dimension `lds`); the
// similarity is s = S · inv_tau. Rows of the tile are rows `I` of z, columns are rows `J`.
// `diag` tiles have I == J: the pair (r, r) is excluded and only the rows are accumulated (the
// tile already holds both (r, j) and (j, r)).
#pragma once

#include <stdint.h>

#include "tile_api.h"

namespace simclr_fast_tiles {
namespace {

// --- forward ------------------------------------------------------------------------------------

// Σ_j e^{s_j − shift} over n entries of one row; with COLS also adds each term to col[j].
template <class V, bool COLS>
inline typename V::vec fwd_fast_seg(const float* s, float* col, int64_t n, typename V::vec acc,
                                    typename V::vec a, typename V::vec b) {
  int64_t j = 0;
  for (; j + V::W <= n; j += V::W) {
    typename V::vec e = V::exp(V::fmadd(V::load(s + j), a, b));
    acc = V::add(acc, e);
    if (COLS) V::store(col + j, V::add(V::load(col + j), e));
  }
  if (j < n) {
    const int m = static_cast<int>(n - j);
    typename V::vec e = V::keep(V::exp(V::fmadd(V::loadn(s + j, m), a, b)), m, 0.0f);
    acc = V::add(acc, e);
    if (COLS) V::storen(col + j, V::add(V::loadn(col + j, m), e), m);
  }
  return acc;
}

template <class V>
void fwd_fast_tile(const TileFwd& t) {
  const typename V::vec a = V::set1(t.inv_tau), b = V::set1(-t.shift);
  if (t.diag) {
    for (int64_t r = 0; r < t.rows; ++r) {
      const float* s = t.S + r * t.lds;
      typename V::vec acc = V::zero();
      acc = fwd_fast_seg<V, false>(s, nullptr, r, acc, a, b);
      acc = fwd_fast_seg<V, false>(s + r + 1, nullptr, t.cols - r - 1, acc, a, b);
      t.row_sum[r] += static_cast<double>(V::hsum(acc));
    }
    return;
  }
  float* col = t.scratch;
  if (t.col_sum != nullptr) {
    for (int64_t j = 0; j < t.cols; ++j) col[j] = 0.0f;
  }
  for (int64_t r = 0; r < t.rows; ++r) {
    const float* s = t.S + r * t.lds;
    typename V::vec acc = t.col_sum != nullptr ? fwd_fast_seg<V, true>(s, col, t.cols, V::zero(), a, b)
                                               : fwd_fast_seg<V, false>(s, nullptr, t.cols, V::zero(), a, b);
    t.row_sum[r] += static_cast<double>(V::hsum(acc));
  }
  if (t.col_sum != nullptr) {
    for (int64_t j = 0; j < t.cols; ++j) t.col_sum[j] += static_cast<double>(col[j]);
  }
}

// Running (max, sum) log-sum-exp state: merge a partial (m2, l2) = (max, Σ e^{x − max}).
inline void lse_merge(double* m, double* l, double m2, double l2) {
  if (l2 == 0.0) return;  // nothing was added (NaN still propagates: NaN == 0 is false)
  if (*l == 0.0) {
    *m = m2;
    *l = l2;
    return;
  }
  const double mx = *m < m2 ? m2 : *m;
  *l = *l * __builtin_exp(*m - mx) + l2 * __builtin_exp(m2 - mx);
  *m = mx;
}

// Max of s_j over n entries of one row; with COLS also col[j] = max(col[j], s_j).
template <class V, bool COLS>
inline typename V::vec fwd_max_seg(const float* s, float* col, int64_t n, typename V::vec mx,
                                   typename V::vec a) {
  int64_t j = 0;
  for (; j + V::W <= n; j += V::W) {
    typename V::vec v = V::mul(V::load(s + j), a);
    mx = V::max(mx, v);
    if (COLS) V::store(col + j, V::max(V::load(col + j), v));
  }
  if (j < n) {
    const int m = static_cast<int>(n - j);
    typename V::vec v = V::keep(V::mul(V::loadn(s + j, m), a), m, -__builtin_inff());
    mx = V::max(mx, v);
    if (COLS) V::storen(col + j, V::max(V::loadn(col + j, m), v), m);
  }
  return mx;
}

// Σ_j e^{s_j − row_max} over n entries; with COLS also col_sum[j] += e^{s_j − col_max[j]}.
template <class V, bool COLS>
inline typename V::vec fwd_sum_seg(const float* s, const float* cmax, float* csum, int64_t n,
                                   typename V::vec acc, typename V::vec a, typename V::vec rmax) {
  int64_t j = 0;
  for (; j + V::W <= n; j += V::W) {
    typename V::vec v = V::mul(V::load(s + j), a);
    acc = V::add(acc, V::exp(V::sub(v, rmax)));
    if (COLS) {
      V::store(csum + j, V::add(V::load(csum + j), V::exp(V::sub(v, V::load(cmax + j)))));
    }
  }
  if (j < n) {
    const int m = static_cast<int>(n - j);
    typename V::vec v = V::mul(V::loadn(s + j, m), a);
    acc = V::add(acc, V::keep(V::exp(V::sub(v, rmax)), m, 0.0f));
    if (COLS) {
      typename V::vec e = V::keep(V::exp(V::sub(v, V::loadn(cmax + j, m))), m, 0.0f);
      V::storen(csum + j, V::add(V::loadn(csum + j, m), e), m);
    }
  }
  return acc;
}

// The numerically safe forward: per-tile row and column maxima, two exponentials per pair.
template <class V>
void fwd_safe_tile(const TileFwd& t) {
  const typename V::vec a = V::set1(t.inv_tau);
  const float ninf = -__builtin_inff();
  if (t.diag) {
    for (int64_t r = 0; r < t.rows; ++r) {
      const float* s = t.S + r * t.lds;
      typename V::vec mx = V::set1(ninf);
      mx = fwd_max_seg<V, false>(s, nullptr, r, mx, a);
      mx = fwd_max_seg<V, false>(s + r + 1, nullptr, t.cols - r - 1, mx, a);
      const float rm = V::hmax(mx);
      if (rm == ninf) continue;  // no entries (a 1 x 1 diagonal tile)
      const typename V::vec rmax = V::set1(rm);
      typename V::vec acc = V::zero();
      acc = fwd_sum_seg<V, false>(s, nullptr, nullptr, r, acc, a, rmax);
      acc = fwd_sum_seg<V, false>(s + r + 1, nullptr, nullptr, t.cols - r - 1, acc, a, rmax);
      lse_merge(t.row_max + r, t.row_sum + r, rm, static_cast<double>(V::hsum(acc)));
    }
    return;
  }
  const bool cols = t.col_sum != nullptr;
  float* cmax = t.scratch;
  float* csum = t.scratch + t.cols;
  if (cols) {
    for (int64_t j = 0; j < t.cols; ++j) {
      cmax[j] = ninf;
      csum[j] = 0.0f;
    }
  }
  float* rmaxs = t.scratch + 2 * t.cols;
  for (int64_t r = 0; r < t.rows; ++r) {
    const float* s = t.S + r * t.lds;
    typename V::vec mx = cols ? fwd_max_seg<V, true>(s, cmax, t.cols, V::set1(ninf), a)
                              : fwd_max_seg<V, false>(s, nullptr, t.cols, V::set1(ninf), a);
    rmaxs[r] = V::hmax(mx);
  }
  for (int64_t r = 0; r < t.rows; ++r) {
    const float* s = t.S + r * t.lds;
    const typename V::vec rmax = V::set1(rmaxs[r]);
    typename V::vec acc = cols ? fwd_sum_seg<V, true>(s, cmax, csum, t.cols, V::zero(), a, rmax)
                               : fwd_sum_seg<V, false>(s, nullptr, nullptr, t.cols, V::zero(), a, rmax);
    lse_merge(t.row_max + r, t.row_sum + r, rmaxs[r], static_cast<double>(V::hsum(acc)));
  }
  if (cols) {
    for (int64_t j = 0; j < t.cols; ++j) lse_merge(t.col_max + j, t.col_sum + j, cmax[j], csum[j]);
  }
}

// --- backward -----------------------------------------------------------------------------------

// In place: S[r][j] <- e^{s − shift} · (u_r + u_j) (the fast path, one exponential per pair).
template <class V>
void bwd_fast_tile(const TileBwd& t) {
  const typename V::vec a = V::set1(t.inv_tau), b = V::set1(-t.shift);
  for (int64_t r = 0; r < t.rows; ++r) {
    float* s = t.S + r * t.lds;
    const typename V::vec ur = V::set1(t.u_row[r]);
    int64_t j = 0;
    for (; j + V::W <= t.cols; j += V::W) {
      typename V::vec e = V::exp(V::fmadd(V::load(s + j), a, b));
      V::store(s + j, V::mul(e, V::add(ur, V::load(t.u_col + j))));
    }
    if (j < t.cols) {
      const int m = static_cast<int>(t.cols - j);
      typename V::vec e = V::exp(V::fmadd(V::loadn(s + j, m), a, b));
      V::storen(s + j, V::mul(e, V::add(ur, V::loadn(t.u_col + j, m))), m);
    }
    if (t.diag) s[r] = 0.0f;
  }
}

// In place: S[r][j] <- coef_r e^{s − lse_r} + coef_j e^{s − lse_j} (safe for any τ).
template <class V>
void bwd_safe_tile(const TileBwd& t) {
  const typename V::vec a = V::set1(t.inv_tau);
  for (int64_t r = 0; r < t.rows; ++r) {
    float* s = t.S + r * t.lds;
    const typename V::vec cr = V::set1(t.coef_row[r]), lr = V::set1(t.lse_row[r]);
    int64_t j = 0;
    for (; j + V::W <= t.cols; j += V::W) {
      typename V::vec v = V::mul(V::load(s + j), a);
      typename V::vec g = V::mul(cr, V::exp(V::sub(v, lr)));
      g = V::fmadd(V::load(t.coef_col + j), V::exp(V::sub(v, V::load(t.lse_col + j))), g);
      V::store(s + j, g);
    }
    if (j < t.cols) {
      const int m = static_cast<int>(t.cols - j);
      typename V::vec v = V::mul(V::loadn(s + j, m), a);
      typename V::vec g = V::mul(cr, V::exp(V::sub(v, lr)));
      g = V::fmadd(V::loadn(t.coef_col + j, m), V::exp(V::sub(v, V::loadn(t.lse_col + j, m))), g);
      V::storen(s + j, g, m);
    }
    if (t.diag) s[r] = 0.0f;
  }
}

template <class V>
constexpr TileOps make_ops(const char* name) {
  return TileOps{name, &fwd_fast_tile<V>, &fwd_safe_tile<V>, &bwd_fast_tile<V>, &bwd_safe_tile<V>};
}

}  // namespace
}  // namespace simclr_fast_tiles
