// The interface between the driver (ntxent.cpp, which owns GEMMs, threads and torch) and the
// per-ISA elementwise tile kernels (tile_kernels.h). Plain C++ types only: this header is also
// included by the AVX2 translation unit, which must not see torch headers.
#pragma once

#include <stdint.h>

namespace simclr_fast_tiles {

// One forward tile. Fast path: row_sum[r] += Σ_j e^{s_rj − shift} (and col_sum[j] += Σ_r … when
// col_sum is set). Safe path: (row_max, row_sum) is a running log-sum-exp state, merged with the
// tile's own maxima (same for the columns). Accumulators are fp64.
struct TileFwd {
  const float* S;   // raw dot products z_r · z_j, rows x cols, leading dimension lds
  int64_t rows, cols, lds;
  float inv_tau;
  float shift;      // fast path only: the fixed shift c >= max |s|
  bool diag;        // rows == columns: skip (r, r), rows only
  double* row_sum;  // rows entries
  double* row_max;  // safe path only
  double* col_sum;  // cols entries, or nullptr for row-only (rectangular) tiles
  double* col_max;  // safe path only
  float* scratch;   // at least 2 * cols + rows floats
};

// One backward tile, turned in place from S into G (the diagonal of a diag tile set to 0).
struct TileBwd {
  float* S;
  int64_t rows, cols, lds;
  float inv_tau;
  float shift;                            // fast path: G = e^{s − shift} (u_r + u_j)
  bool diag;
  const float *u_row, *u_col;             // fast path: u = coef · e^{shift − lse}
  const float *lse_row, *lse_col;         // safe path: G = coef_r e^{s − lse_r} + coef_j e^{s − lse_j}
  const float *coef_row, *coef_col;
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
