// Elementwise work on one similarity tile, written once over a small SIMD interface `V`.
//
// Included by exactly two translation units, each instantiating it for one instruction set:
// tile_avx2.cpp (AVX2 + FMA, selected at run time) and tile_generic.cpp (baseline x86-64 / any
// CPU). Everything here has internal linkage (anonymous namespace) and uses no standard-library
// templates, so the AVX2 copy can never be picked by the linker for code that runs on a CPU
// without AVX2. Do not include torch or std headers here.
//
// A tile holds raw dot products S[r][j] = z_r · c_j (row-major, leading dimension `lds`); the
// similarity is s = S · inv_tau. Rows of the tile are rows `I` of z, columns are rows `J` of z
// (or keys). `diag` tiles have I == J: the pair (r, r) is left out and only the rows are
// accumulated (the tile already holds both (r, j) and (j, r)). `skip[r]` (when set) is one more
// column of row r to leave out: the excluded pair, which also leaves the column's sum.
//
// Every exponent is formed by one fused multiply-add, s·inv_tau − shift, so the only rounding is
// that of the result: the error of e^{s − shift} is |s − shift|·2^−24 relative, not |s|·2^−24.
#pragma once

#include <stdint.h>

#include "tile_api.h"

namespace simclr_fast_tiles {
namespace {

// Calls f(lo, hi) for the ranges of [0, n) left when the entries p and q (−1: none; both < n)
// are removed. With neither, one call f(0, n): tiles without exclusions pay nothing.
template <class F>
inline void for_kept(int64_t n, int64_t p, int64_t q, F f) {
  if (q < p) {
    const int64_t t = p;
    p = q;
    q = t;
  }
  int64_t lo = 0;
  if (p >= 0) {
    f(lo, p);
    lo = p + 1;
  }
  if (q >= 0 && q != p) {
    f(lo, q);
    lo = q + 1;
  }
  f(lo, n);
}

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
  const bool cols = t.col_sum != nullptr;  // never for diag tiles
  float* col = t.scratch;
  if (cols) {
    for (int64_t j = 0; j < t.cols; ++j) col[j] = 0.0f;
  }
  for (int64_t r = 0; r < t.rows; ++r) {
    const float* s = t.S + r * t.lds;
    typename V::vec acc = V::zero();
    for_kept(t.cols, t.diag ? r : -1, t.skip != nullptr ? t.skip[r] : -1, [&](int64_t lo, int64_t hi) {
      acc = cols ? fwd_fast_seg<V, true>(s + lo, col + lo, hi - lo, acc, a, b)
                 : fwd_fast_seg<V, false>(s + lo, nullptr, hi - lo, acc, a, b);
    });
    t.row_sum[r] += static_cast<double>(V::hsum(acc));
  }
  if (cols) {
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

// Σ_j e^{s_j − row_max} over n entries (nrmax = −row_max); with COLS also
// col_sum[j] += e^{s_j − col_max[j]}.
template <class V, bool COLS>
inline typename V::vec fwd_sum_seg(const float* s, const float* cmax, float* csum, int64_t n,
                                   typename V::vec acc, typename V::vec a, typename V::vec nrmax) {
  int64_t j = 0;
  for (; j + V::W <= n; j += V::W) {
    const typename V::vec x = V::load(s + j);
    acc = V::add(acc, V::exp(V::fmadd(x, a, nrmax)));
    if (COLS) {
      V::store(csum + j, V::add(V::load(csum + j), V::exp(V::fmsub(x, a, V::load(cmax + j)))));
    }
  }
  if (j < n) {
    const int m = static_cast<int>(n - j);
    const typename V::vec x = V::loadn(s + j, m);
    acc = V::add(acc, V::keep(V::exp(V::fmadd(x, a, nrmax)), m, 0.0f));
    if (COLS) {
      typename V::vec e = V::keep(V::exp(V::fmsub(x, a, V::loadn(cmax + j, m))), m, 0.0f);
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
  const bool cols = t.col_sum != nullptr;  // never for diag tiles
  float* cmax = t.scratch;
  float* csum = t.scratch + t.cols;
  float* rmaxs = t.scratch + 2 * t.cols;
  if (cols) {
    for (int64_t j = 0; j < t.cols; ++j) {
      cmax[j] = ninf;
      csum[j] = 0.0f;
    }
  }
  for (int64_t r = 0; r < t.rows; ++r) {
    const float* s = t.S + r * t.lds;
    typename V::vec mx = V::set1(ninf);
    for_kept(t.cols, t.diag ? r : -1, t.skip != nullptr ? t.skip[r] : -1, [&](int64_t lo, int64_t hi) {
      mx = cols ? fwd_max_seg<V, true>(s + lo, cmax + lo, hi - lo, mx, a)
                : fwd_max_seg<V, false>(s + lo, nullptr, hi - lo, mx, a);
    });
    rmaxs[r] = V::hmax(mx);
  }
  for (int64_t r = 0; r < t.rows; ++r) {
    // No kept entry (a 1 x 1 diagonal tile, a row whose one column is excluded), or all at −inf:
    // nothing to add to the row or the columns.
    if (rmaxs[r] == ninf) continue;
    const float* s = t.S + r * t.lds;
    const typename V::vec nrmax = V::set1(-rmaxs[r]);
    typename V::vec acc = V::zero();
    for_kept(t.cols, t.diag ? r : -1, t.skip != nullptr ? t.skip[r] : -1, [&](int64_t lo, int64_t hi) {
      acc = cols ? fwd_sum_seg<V, true>(s + lo, cmax + lo, csum + lo, hi - lo, acc, a, nrmax)
                 : fwd_sum_seg<V, false>(s + lo, nullptr, nullptr, hi - lo, acc, a, nrmax);
    });
    lse_merge(t.row_max + r, t.row_sum + r, rmaxs[r], static_cast<double>(V::hsum(acc)));
  }
  if (cols) {
    for (int64_t j = 0; j < t.cols; ++j) lse_merge(t.col_max + j, t.col_sum + j, cmax[j], csum[j]);
  }
}

// --- backward -----------------------------------------------------------------------------------

// G = 0 where the pair is not a column of its row: (r, r) of a diag tile, (r, skip[r]).
inline void zero_left_out(const TileBwd& t, float* g, int64_t r) {
  if (t.diag) g[r] = 0.0f;
  if (t.skip != nullptr && t.skip[r] >= 0) g[t.skip[r]] = 0.0f;
}

// In place: S[r][j] <- e^{s − shift} · (u_r + u_j), or · u_r without COLS (one exponential).
template <class V, bool COLS>
void bwd_fast_rows(const TileBwd& t) {
  const typename V::vec a = V::set1(t.inv_tau), b = V::set1(-t.shift);
  for (int64_t r = 0; r < t.rows; ++r) {
    float* s = t.S + r * t.lds;
    const typename V::vec ur = V::set1(t.u_row[r]);
    int64_t j = 0;
    for (; j + V::W <= t.cols; j += V::W) {
      typename V::vec e = V::exp(V::fmadd(V::load(s + j), a, b));
      V::store(s + j, V::mul(e, COLS ? V::add(ur, V::load(t.u_col + j)) : ur));
    }
    if (j < t.cols) {
      const int m = static_cast<int>(t.cols - j);
      typename V::vec e = V::exp(V::fmadd(V::loadn(s + j, m), a, b));
      V::storen(s + j, V::mul(e, COLS ? V::add(ur, V::loadn(t.u_col + j, m)) : ur), m);
    }
    zero_left_out(t, s, r);
  }
}

template <class V>
void bwd_fast_tile(const TileBwd& t) {
  if (t.u_col != nullptr) {
    bwd_fast_rows<V, true>(t);
  } else {
    bwd_fast_rows<V, false>(t);
  }
}

// In place: S[r][j] <- sgn_r e^{(s − shift_r) − lam_r} [+ sgn_j e^{(s − shift_j) − lam_j}], that is
// weight_r e^{s − shift_r} + weight_j e^{s − shift_j} with the weights inside the exponent, so a
// huge e^{s − shift} times a tiny weight neither overflows nor gives inf · 0 (safe for any τ).
template <class V, bool COLS>
void bwd_safe_rows(const TileBwd& t) {
  const typename V::vec a = V::set1(t.inv_tau);
  for (int64_t r = 0; r < t.rows; ++r) {
    float* s = t.S + r * t.lds;
    const typename V::vec nsr = V::set1(-t.shift_row[r]), lr = V::set1(t.lam_row[r]),
                          sr = V::set1(t.sgn_row[r]);
    int64_t j = 0;
    for (; j + V::W <= t.cols; j += V::W) {
      const typename V::vec x = V::load(s + j);
      typename V::vec g = V::mul(sr, V::exp(V::sub(V::fmadd(x, a, nsr), lr)));
      if (COLS) {
        const typename V::vec ec =
            V::exp(V::sub(V::fmsub(x, a, V::load(t.shift_col + j)), V::load(t.lam_col + j)));
        g = V::fmadd(V::load(t.sgn_col + j), ec, g);
      }
      V::store(s + j, g);
    }
    if (j < t.cols) {
      const int m = static_cast<int>(t.cols - j);
      const typename V::vec x = V::loadn(s + j, m);
      typename V::vec g = V::mul(sr, V::exp(V::sub(V::fmadd(x, a, nsr), lr)));
      if (COLS) {
        const typename V::vec ec =
            V::exp(V::sub(V::fmsub(x, a, V::loadn(t.shift_col + j, m)), V::loadn(t.lam_col + j, m)));
        g = V::fmadd(V::loadn(t.sgn_col + j, m), ec, g);
      }
      V::storen(s + j, g, m);
    }
    zero_left_out(t, s, r);
  }
}

template <class V>
void bwd_safe_tile(const TileBwd& t) {
  if (t.shift_col != nullptr) {
    bwd_safe_rows<V, true>(t);
  } else {
    bwd_safe_rows<V, false>(t);
  }
}

template <class V>
constexpr TileOps make_ops(const char* name) {
  return TileOps{name, &fwd_fast_tile<V>, &fwd_safe_tile<V>, &bwd_fast_tile<V>, &bwd_safe_tile<V>};
}

}  // namespace
}  // namespace simclr_fast_tiles
