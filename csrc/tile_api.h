// The interface between the driver (ntxent.cpp, which owns GEMMs, threads and torch) and the
// per-ISA elementwise tile kernels (tile_kernels.h). Plain C++ types only: this header is also
// included by the AVX2 translation unit, which must not see torch headers.
#pragma once

#include <stdint.h>

namespace simclr_fast_tiles {

// One forward tile. Fast path: row_sum[r] += Σ_j e^{s_rj − shift} (and col_sum[j] += Σ_r … when
// col_sum is set). Safe path: (row_max, row_sum) is a running log-sum-exp state, merged with the
// tile's own maxima (same for the columns). Accumulators are fp64. Entries left out of every sum:
// (r, r) of a diag tile and (r, skip[r]) when skip is set (−1: none).
struct TileFwd {
  const float* S;       // raw dot products z_r · c_j, rows x cols, leading dimension lds
  int64_t rows, cols, lds;
  float inv_tau;
  float shift;          // fast path only: the fixed shift c >= max |s|
  bool diag;            // rows == columns: skip (r, r), rows only
  const int64_t* skip;  // rows entries: the column of row r left out (the exclusion), or nullptr
  double* row_sum;      // rows entries
  double* row_max;      // safe path only
  double* col_sum;      // cols entries, or nullptr for row-only (rectangular) tiles
  double* col_max;      // safe path only
  float* scratch;       // at least 2 * cols + rows floats
};

// One backward tile, turned in place from S into G; G = 0 at (r, r) of a diag tile and at
// (r, skip[r]). Row-only tiles (keys mode: u_col / shift_col == nullptr) have only the row term.
struct TileBwd {
  float* S;
  int64_t rows, cols, lds;
  float inv_tau;
  float shift;                             // fast path: G = e^{s − shift} (u_r + u_j)
  bool diag;
  const int64_t* skip;
  const float *u_row, *u_col;              // fast path: u = weight · e^{shift − shift_k}
  // Safe path: G = sgn_r e^{(s − shift_r) − lam_r} + sgn_j e^{(s − shift_j) − lam_j}, with
  // weight = sgn · e^{−lam} (lam = −log|weight|, +inf for weight 0).
  const float *shift_row, *shift_col;
  const float *lam_row, *lam_col;
  const float *sgn_row, *sgn_col;
};

struct TileOps {
  const char* isa;
  void (*fwd_fast)(const TileFwd&);
  void (*fwd_safe)(const TileFwd&);
  void (*bwd_fast)(const TileBwd&);
  void (*bwd_safe)(const TileBwd&);
};

// Defined in tile_avx2.cpp and tile_generic.cpp.
const TileOps& tile_ops_avx2();
const TileOps& tile_ops_generic();

}  // namespace simclr_fast_tiles
