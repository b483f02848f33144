// Fused NT-Xent on the CPU: the two ops of the backend contract (simclr_fast/backends/base.py),
// registered as torch ops simclr_fast::ntxent_fwd_cpu / simclr_fast::ntxent_bwd_cpu.
//
// z (N, D) holds normalized fp32 embeddings; the caller owns rows [row_start, row_start + row_count)
// ("owned", O). With s_kj = inv_tau · z_k · c_j and C(k) the columns of row k (docs/design.md §2
// and §9, SimCLR arXiv 2002.05709):
//
//   forward   x_k  = log Σ_{j∈C(k)} e^{s_kj − shift_k}                                      k in O
//   backward  dz_k = inv_tau Σ_{j∈C(k)} (weight_k e^{s_kj − shift_k} + weight_j e^{s_kj − shift_j}) c_j
//                  = inv_tau (G c)_k,   G symmetric in self mode                              k in O
//
// Columns. Self mode (keys = None): c = z, C(k) = all rows but k and exclude[k] (a global index,
// −1 for none; NT-Xent passes the positive, with shift_k = s_pos,k). Exclusion is symmetric (checked
// among the owned rows), so the one entry (k, exclude_k) of a tile is left out of row k's sum and of
// column exclude_k's sum alike, and G is 0 there and on the diagonal. The forward's shift covers
// the owned rows, the backward's shift and weight all N rows. Keys mode (a memory bank, keys (K, D)):
// c = keys, C(k) = all K keys, no exclusion, only the row terms weight_k e^{s − shift_k}, and shift
// and weight cover the owned rows; keys get no gradient.
//
// Schedule. O is cut into tiles of T rows. The square block O x O is symmetric, so only tiles
// I <= J are visited: each S = z_I z_Jᵀ is computed once and serves its rows and, transposed, its
// columns (forward: row sums and column sums of e^{s}; backward: dz_I += G z_J and dz_J += Gᵀ z_I).
// That is N²·D FLOPs forward and 3·N²·D backward instead of 2 and 4 for a row-wise schedule. The
// columns outside O (only when the distributed layer hands us a sub-block) are rectangular tiles
// whose results feed the owned rows only; in keys mode every tile is rectangular (owned rows x a
// chunk of keys), and the tile list runs over row AND key blocks, so B = 256 rows against 65536
// keys still fill every thread. Memory: O(N·D + K·D) plus one tile per thread. Tile products go
// through ATen's GEMM (MKL in the official wheels), one thread per product; the elementwise work
// runs in tile_kernels.h. A tile row whose excluded column falls inside the tile splits its row
// segment there (like the diagonal); other rows and tiles run the same loop as without exclusion.
//
// Exponentials. |s| <= c, the Cauchy–Schwarz bound |inv_tau| · max|z|² (keys mode: |inv_tau| ·
// max_k|z_k| · max_j|keys_j|). With that fixed shift, e^{s − c} lies in [e^{−2c}, 1]: for c <= 40
// it neither overflows nor leaves the normal range, so ONE exponential per pair serves both the row
// and the column sums, and in the backward G_kj = e^{s_kj − c} (u_k + u_j) with u = weight ·
// e^{c − shift} (fp64, then fp32; checked finite). For larger c (|τ| < 0.025 on normalized z) a safe
// path keeps per-tile maxima (online log-sum-exp, arXiv 1805.02867) and spends two exponentials
// per pair; its backward writes weight = sgn · e^{−lam} into the exponent, so a huge e^{s − shift}
// (a negative far above the positive, early in training) times a tiny weight stays finite.
//
// Precision (issue #12). Late in training x_k ~ −25 and below while s and shift_k are ~1/τ: the
// small quantity must never be the difference of two rounded fp32 numbers of size 1/τ. Every
// exponent is one FMA, s·inv_tau − shift, rounded once (error |s − shift|·2^−24, tile_kernels.h);
// sums of e^{…} are fp32 within a tile row and fp64 across tiles; x_k is assembled in fp64 as
// log Σ e^{s − c} + (c − shift_k) (fast) or (max − shift_k) + log Σ e^{s − max} (safe) and rounded
// once. What remains is the fp32 tile GEMM's error in s (~|inv_tau|·1e-7, the larger part) and the
// exponents' rounding, which is of the order of S's own rounding to fp32. On the grid
// (tests/test_cpu_backend.py::test_peaked_inputs_keep_relative_accuracy, against fp64 evaluations of
// the same formulas on the same fp32 inputs; 2026-12-02) the worst errors were 5.1e-6 for the mean
// loss, 6.3e-6 for dz and 2.1e-7·|inv_tau| for one row's loss (1.03e-5 at τ = 0.02).
//
// Threads and determinism. Work is split into at::get_num_threads() tasks; task t takes tiles
// t, t + tasks, t + 2·tasks, … of a fixed list and accumulates into its own buffers (row sums in
// fp64, dz partials), merged afterwards in task order. No locks or atomics; results depend on the
// thread count only, and are bit-identical run to run for a given count.
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include "tile_api.h"

// MKL's thread-local thread count (C interface; the lower-case symbol is the Fortran one, which
// takes a pointer), when torch's BLAS is MKL (the official x86-64 wheels export it
// from libtorch_cpu); a weak reference, so other BLAS builds load and simply skip the call.
extern "C" int MKL_Set_Num_Threads_Local(int nthreads) __attribute__((weak));

namespace {

// Tile products run inside our own parallel region and must stay on the calling thread. torch
// turns MKL's dynamic threading off (mkl_set_dynamic(0)) and libgomp allows nested teams, so
// without this each tile GEMM started a nested team of at::get_num_threads() threads. Measured
// 2026-11-22 on the 2-core dev box (2B = 2048, D = 64): backward 2.5x slower with 2 threads than
// with 1 before this guard.
class SingleThreadedBlas {
 public:
  SingleThreadedBlas() : active_(MKL_Set_Num_Threads_Local != nullptr) {
    if (active_) previous_ = MKL_Set_Num_Threads_Local(1);
  }
  ~SingleThreadedBlas() {
    if (active_) MKL_Set_Num_Threads_Local(previous_);
  }
  SingleThreadedBlas(const SingleThreadedBlas&) = delete;
  SingleThreadedBlas& operator=(const SingleThreadedBlas&) = delete;

 private:
  bool active_;
  int previous_ = 0;
};

using simclr_fast_tiles::TileBwd;
using simclr_fast_tiles::TileFwd;
using simclr_fast_tiles::TileOps;

// Rows per tile and columns per chunk. Measured 2026-11-22 on the 2-core AMD EPYC (Zen 3, AVX2)
// dev machine, fwd+bwd, D = 128, with `benchmarks/bench_cpu_kernel.py --tiles` (interleaved
// rounds, each run paired with a GEMM probe; numbers in that script's TILE_MEASUREMENT): 128-row
// tiles were among the slowest; 256 x 256 had the best median in both sweeps at low load (256-1024
// columns, 384 x 768 and 512 x 512 within ~10 %, inside the noise of the shared box; at high load
// 256 x 512 / 256 x 1024 led by < 10 %) and keeps the per-thread tile buffer at 256 KiB.
// Override with SIMCLR_FAST_CPU_TILE (rows) and SIMCLR_FAST_CPU_TILE_COLS (columns per chunk;
// default max(rows, kDefaultTileCols)). Keys mode uses the same shape (not measured separately).
constexpr int64_t kDefaultTileRows = 256;
constexpr int64_t kDefaultTileCols = 256;

// Largest shift c for the one-exponential path: e^{−2c} >= e^{−80} ≈ 1.8e-35 stays above
// FLT_MIN ≈ 1.2e-38. A bound from fp32's range, not a measurement.
constexpr double kFastShiftMax = 40.0;
// Largest |u_k| = |weight_k| e^{c − shift_k} the fast backward accepts: (u_k + u_j) and G stay
// finite. A bound from fp32's range (FLT_MAX ≈ 3.4e38), not a measurement.
constexpr double kFastUMax = 1e37;

enum Kind : int { kDiag = 0, kSym = 1, kRect = 2 };

struct Tile {
  int64_t i0, ni, j0, nj;
  Kind kind;
};

bool cpu_has_avx2() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

// The elementwise kernels for this CPU; SIMCLR_FAST_CPU_ISA=generic|avx2 forces one (tests).
const TileOps& select_ops() {
  const char* env = std::getenv("SIMCLR_FAST_CPU_ISA");
  const std::string want = env != nullptr ? env : "";
  if (want == "generic") return simclr_fast_tiles::tile_ops_generic();
  if (want == "avx2") {
    TORCH_CHECK(cpu_has_avx2(), "SIMCLR_FAST_CPU_ISA=avx2, but this CPU lacks AVX2/FMA; unset it");
    return simclr_fast_tiles::tile_ops_avx2();
  }
  TORCH_CHECK(want.empty() || want == "auto",
              "SIMCLR_FAST_CPU_ISA must be 'auto', 'avx2' or 'generic', got '", want, "'");
  return cpu_has_avx2() ? simclr_fast_tiles::tile_ops_avx2() : simclr_fast_tiles::tile_ops_generic();
}

int64_t env_int(const char* name, int64_t fallback) {
  const char* env = std::getenv(name);
  if (env == nullptr || *env == '\0') return fallback;
  char* end = nullptr;
  const long long t = std::strtoll(env, &end, 10);
  TORCH_CHECK(end != nullptr && *end == '\0' && t >= 8 && t <= 8192, name,
              " must be an integer in [8, 8192], got '", env, "'");
  return static_cast<int64_t>(t);
}

// Rows per tile and columns per chunk.
struct TileShape {
  int64_t rows, cols;
};

TileShape tile_shape() {
  const int64_t rows = env_int("SIMCLR_FAST_CPU_TILE", kDefaultTileRows);
  return {rows, env_int("SIMCLR_FAST_CPU_TILE_COLS", std::max(rows, kDefaultTileCols))};
}

// Self mode: tiles of the owned rows O = [r0, r0 + rc) against all N columns, row block by row
// block: the square diagonal tile, then the columns right of it inside O and the columns outside
// O, in chunks of `tj` columns (a chunk needs no square shape: only the diagonal tile does).
std::vector<Tile> make_schedule(int64_t n, int64_t r0, int64_t rc, int64_t ti, int64_t tj) {
  std::vector<Tile> tiles;
  const int64_t r1 = r0 + rc;
  for (int64_t i0 = r0; i0 < r1; i0 += ti) {
    const int64_t ni = std::min(ti, r1 - i0);
    tiles.push_back({i0, ni, i0, ni, kDiag});
    for (int64_t j0 = i0 + ni; j0 < r1; j0 += tj) tiles.push_back({i0, ni, j0, std::min(tj, r1 - j0), kSym});
    for (int64_t j0 = 0; j0 < r0; j0 += tj) tiles.push_back({i0, ni, j0, std::min(tj, r0 - j0), kRect});
    for (int64_t j0 = r1; j0 < n; j0 += tj) tiles.push_back({i0, ni, j0, std::min(tj, n - j0), kRect});
  }
  return tiles;
}

// Keys mode: the owned rows against the K keys, every tile rectangular. The list interleaves
// nothing special: tasks take every tasks-th tile, so B = 256 rows (one row block) against
// K = 65536 keys (256 chunks) still keep all threads busy.
std::vector<Tile> make_key_schedule(int64_t r0, int64_t rc, int64_t k, int64_t ti, int64_t tj) {
  std::vector<Tile> tiles;
  for (int64_t i0 = r0; i0 < r0 + rc; i0 += ti) {
    const int64_t ni = std::min(ti, r0 + rc - i0);
    for (int64_t j0 = 0; j0 < k; j0 += tj) tiles.push_back({i0, ni, j0, std::min(tj, k - j0), kRect});
  }
  return tiles;
}

// max_i |x_i|² over rows [r0, r0 + rc) of x (n x d), in fp64.
double max_sq_norm(const float* x, int64_t r0, int64_t rc, int64_t d) {
  double mx = 0.0;
  for (int64_t i = r0; i < r0 + rc; ++i) {
    double sq = 0.0;
    for (int64_t k = 0; k < d; ++k) sq += static_cast<double>(x[i * d + k]) * x[i * d + k];
    mx = std::max(mx, sq);
  }
  return mx;
}

// The fixed shift c, an upper bound of every |s_kj| (Cauchy–Schwarz): |inv_tau| · max|z|² in self
// mode, |inv_tau| · max_owned |z_k| · max |keys_j| in keys mode.
double shift_bound(const float* z, int64_t n, int64_t r0, int64_t rc, int64_t d, double inv_tau,
                   const float* keys, int64_t k) {
  if (keys == nullptr) return std::abs(inv_tau) * max_sq_norm(z, 0, n, d);
  return std::abs(inv_tau) * std::sqrt(max_sq_norm(z, r0, rc, d) * max_sq_norm(keys, 0, k, d));
}

void check_inputs(const char* op, const at::Tensor& z, int64_t row_start, int64_t row_count, double inv_tau) {
  TORCH_CHECK(z.device().is_cpu(), op, ": z must be a CPU tensor, got ", z.device());
  TORCH_CHECK(z.scalar_type() == at::kFloat, op, ": z must be float32, got ", z.scalar_type(),
              " (the Python layer converts bf16/fp16 to fp32; use backend='torch' for float64)");
  TORCH_CHECK(z.dim() == 2, op, ": z must be 2-D (N, D), got ", z.dim(), " dims");
  TORCH_CHECK(z.is_contiguous(), op, ": z must be contiguous; pass z.contiguous()");
  TORCH_CHECK(z.size(1) >= 1, op, ": z must have D >= 1 columns, got shape ", z.sizes());
  TORCH_CHECK(row_start >= 0 && row_count >= 0 && row_start + row_count <= z.size(0), op, ": rows [",
              row_start, ", ", row_start + row_count, ") out of range for N = ", z.size(0),
              "; need 0 <= row_start and row_start + row_count <= N");
  TORCH_CHECK(std::isfinite(inv_tau), op, ": inv_tau must be finite, got ", inv_tau);
}

void check_vector(const char* op, const at::Tensor& v, const char* name, int64_t n, const char* what) {
  TORCH_CHECK(v.device().is_cpu() && v.scalar_type() == at::kFloat && v.dim() == 1 && v.size(0) == n &&
                  v.is_contiguous(),
              op, ": ", name, " must be a contiguous float32 CPU tensor of shape (", n, ",) (", what,
              "), got ", v.scalar_type(), " of shape ", v.sizes(), " on ", v.device(),
              v.is_contiguous() ? "" : " (not contiguous)");
}

// keys: (K, D) fp32 contiguous, same D as z; exclusion and keys do not mix.
const float* check_keys(const char* op, const std::optional<at::Tensor>& keys,
                        const std::optional<at::Tensor>& ex, const at::Tensor& z) {
  if (!keys.has_value()) return nullptr;
  const at::Tensor& k = *keys;
  TORCH_CHECK(k.device().is_cpu() && k.scalar_type() == at::kFloat && k.dim() == 2 && k.is_contiguous(), op,
              ": keys must be a contiguous float32 CPU tensor of shape (K, D), got ", k.scalar_type(),
              " of shape ", k.sizes(), " on ", k.device(), k.is_contiguous() ? "" : " (not contiguous)");
  TORCH_CHECK(k.size(1) == z.size(1), op, ": keys must have D = ", z.size(1), " columns like z, got shape ",
              k.sizes());
  TORCH_CHECK(!ex.has_value(), op, ": exclude must be None when keys are given (a bank has no pairs to "
              "exclude; the positive is the loss layer's)");
  return k.const_data_ptr<float>();
}

// exclude: (row_count,) int64 global column indices or −1, symmetric among the owned rows.
const int64_t* check_exclude(const char* op, const std::optional<at::Tensor>& ex, int64_t n, int64_t r0,
                             int64_t rc) {
  if (!ex.has_value()) return nullptr;
  const at::Tensor& e = *ex;
  TORCH_CHECK(e.device().is_cpu() && e.scalar_type() == at::kLong && e.dim() == 1 && e.size(0) == rc &&
                  e.is_contiguous(),
              op, ": exclude must be a contiguous int64 CPU tensor of shape (", rc,
              ",) (one global column index per owned row, -1 for none), got ", e.scalar_type(), " of shape ",
              e.sizes(), " on ", e.device());
  const int64_t* p = e.const_data_ptr<int64_t>();
  for (int64_t i = 0; i < rc; ++i) {
    const int64_t j = p[i];
    TORCH_CHECK(j >= -1 && j < n, op, ": exclude[", i, "] = ", j, " is not a column of z (N = ", n,
                "); use an index in [0, N) or -1 for none");
    if (j >= r0 && j < r0 + rc && j != r0 + i) {
      TORCH_CHECK(p[j - r0] == r0 + i, op, ": exclude must be symmetric: row ", r0 + i, " excludes ", j,
                  " but row ", j, " excludes ", p[j - r0], " (pairs such as positives exclude each other)");
    }
  }
  return p;
}

// Running (max, sum) log-sum-exp state: merge a partial (m2, l2) = (max, Σ e^{x − max}); l == 0
// is the empty state.
void lse_merge(double* m, double* l, double m2, double l2) {
  if (l2 == 0.0) return;  // nothing was added (NaN still propagates: NaN == 0 is false)
  if (*l == 0.0) {
    *m = m2;
    *l = l2;
    return;
  }
  const double mx = std::max(*m, m2);
  *l = *l * std::exp(*m - mx) + l2 * std::exp(m2 - mx);
  *m = mx;
}

int64_t num_tasks(size_t tiles) {
  return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), static_cast<int64_t>(tiles)));
}

// skip[r] = the column of row i0 + r, inside the tile's columns [j0, j0 + nj), that its exclusion
// leaves out, or −1; returns nullptr when no row of the tile has one (the common case).
const int64_t* tile_skips(const int64_t* ex, int64_t r0, const Tile& tl, int64_t* skip) {
  if (ex == nullptr) return nullptr;
  bool any = false;
  for (int64_t r = 0; r < tl.ni; ++r) {
    const int64_t j = ex[tl.i0 - r0 + r] - tl.j0;
    const bool in = ex[tl.i0 - r0 + r] >= 0 && j >= 0 && j < tl.nj;
    skip[r] = in ? j : -1;
    any = any || in;
  }
  return any ? skip : nullptr;
}

at::Tensor ntxent_fwd_cpu(const at::Tensor& z_in, int64_t row_start, int64_t row_count, double inv_tau,
                          const at::Tensor& shift_in, const std::optional<at::Tensor>& exclude_in,
                          const std::optional<at::Tensor>& keys_in) {
  const char* op = "ntxent_fwd_cpu";
  check_inputs(op, z_in, row_start, row_count, inv_tau);
  const int64_t n = z_in.size(0), d = z_in.size(1), rc = row_count, r0 = row_start;
  check_vector(op, shift_in, "shift", rc, "the owned rows' shifts");
  const float* kp = check_keys(op, keys_in, exclude_in, z_in);
  const int64_t* ex = check_exclude(op, exclude_in, n, r0, rc);
  const at::Tensor z = z_in.detach();
  const at::Tensor cols_src = kp != nullptr ? keys_in->detach() : z;
  const int64_t nk = kp != nullptr ? cols_src.size(0) : 0;
  at::Tensor out = at::empty({rc}, z.options());
  if (rc == 0) return out;
  const float* zp = z.const_data_ptr<float>();
  const float* sh = shift_in.const_data_ptr<float>();
  const double c = shift_bound(zp, n, r0, rc, d, inv_tau, kp, nk);
  const bool fast = c <= kFastShiftMax;
  const TileOps& ops = select_ops();
  const TileShape ts = tile_shape();
  const std::vector<Tile> tiles = kp != nullptr ? make_key_schedule(r0, rc, nk, ts.rows, ts.cols)
                                                 : make_schedule(n, r0, rc, ts.rows, ts.cols);
  const int64_t tasks = num_tasks(tiles.size());
  std::vector<double> sums(tasks * rc, 0.0), maxs(fast ? 0 : tasks * rc, 0.0);

  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    at::AutoDispatchBelowADInplaceOrView guard;  // plain tensors: skip autograd in worker threads
    SingleThreadedBlas blas_guard;
    at::Tensor buf = at::empty({ts.rows * std::max(ts.rows, ts.cols)}, z.options());
    std::vector<float> scratch(2 * std::max(ts.rows, ts.cols) + ts.rows);
    std::vector<int64_t> skip(ts.rows);
    for (int64_t task = begin; task < end; ++task) {
      double* sum = sums.data() + task * rc;
      double* mx = fast ? nullptr : maxs.data() + task * rc;
      for (size_t k = task; k < tiles.size(); k += tasks) {
        const Tile& tl = tiles[k];
        at::Tensor s = buf.narrow(0, 0, tl.ni * tl.nj).view({tl.ni, tl.nj});
        at::mm_out(s, z.narrow(0, tl.i0, tl.ni), cols_src.narrow(0, tl.j0, tl.nj).t());
        const bool cols = tl.kind == kSym;
        TileFwd a{s.const_data_ptr<float>(), tl.ni, tl.nj, tl.nj, static_cast<float>(inv_tau),
                  static_cast<float>(c), tl.kind == kDiag, tile_skips(ex, r0, tl, skip.data()),
                  sum + (tl.i0 - r0), fast ? nullptr : mx + (tl.i0 - r0),
                  cols ? sum + (tl.j0 - r0) : nullptr, cols && !fast ? mx + (tl.j0 - r0) : nullptr,
                  scratch.data()};
        if (fast) {
          ops.fwd_fast(a);
        } else {
          ops.fwd_safe(a);
        }
      }
    }
  });

  // x_k = log Σ_j e^{s_kj − shift_k}, assembled in fp64 from the fp64 sums: the fast path's
  // log Σ e^{s − c} + (c − shift_k) and the safe path's (max − shift_k) + log Σ e^{s − max} are
  // never rounded to fp32 before shift_k is taken off (both terms are ~1/τ; x_k may be ~1e-8).
  // No column at all (N = 2 with its pair excluded, N = 1, K = 0) gives log 0 = −inf.
  float* o = out.data_ptr<float>();
  for (int64_t i = 0; i < rc; ++i) {
    if (fast) {
      double total = 0.0;
      for (int64_t task = 0; task < tasks; ++task) total += sums[task * rc + i];
      o[i] = static_cast<float>(std::log(total) + (c - static_cast<double>(sh[i])));
    } else {
      double m = 0.0, l = 0.0;
      for (int64_t task = 0; task < tasks; ++task) {
        lse_merge(&m, &l, maxs[task * rc + i], sums[task * rc + i]);
      }
      o[i] = static_cast<float>((m - static_cast<double>(sh[i])) + std::log(l));
    }
  }
  return out;
}

at::Tensor ntxent_bwd_cpu(const at::Tensor& z_in, const at::Tensor& shift_in, const at::Tensor& weight_in,
                          int64_t row_start, int64_t row_count, double inv_tau,
                          const std::optional<at::Tensor>& exclude_in,
                          const std::optional<at::Tensor>& keys_in) {
  const char* op = "ntxent_bwd_cpu";
  check_inputs(op, z_in, row_start, row_count, inv_tau);
  const int64_t n = z_in.size(0), d = z_in.size(1), rc = row_count, r0 = row_start;
  const float* kp = check_keys(op, keys_in, exclude_in, z_in);
  // Self mode: every row's shift and weight (row j's own terms reach dz_k); keys mode: owned rows.
  const int64_t nv = kp != nullptr ? rc : n;
  const char* what = kp != nullptr ? "the owned rows' values in keys mode" : "one per row of z, all N rows";
  check_vector(op, shift_in, "shift", nv, what);
  check_vector(op, weight_in, "weight", nv, what);
  const int64_t* ex = check_exclude(op, exclude_in, n, r0, rc);
  const at::Tensor z = z_in.detach();
  const at::Tensor cols_src = kp != nullptr ? keys_in->detach() : z;
  const int64_t nk = kp != nullptr ? cols_src.size(0) : 0;
  at::Tensor out = at::empty({rc, d}, z.options());
  if (rc == 0) return out;
  const float* zp = z.const_data_ptr<float>();
  const float* sh = shift_in.const_data_ptr<float>();
  const float* wp = weight_in.const_data_ptr<float>();
  const double c = shift_bound(zp, n, r0, rc, d, inv_tau, kp, nk);
  // Fast path: u_k = weight_k e^{c − shift_k} (fp64, then fp32), G = e^{s − c}(u_k + u_j), one
  // exponential per pair; taken when every u is finite and small enough that u_k + u_j is too.
  bool fast = c <= kFastShiftMax;
  std::vector<float> u(fast ? nv : 0);
  for (int64_t k = 0; fast && k < nv; ++k) {
    const double uk = static_cast<double>(wp[k]) * std::exp(c - static_cast<double>(sh[k]));
    fast = std::abs(uk) <= kFastUMax;  // false for inf/NaN too
    u[k] = static_cast<float>(uk);
  }
  // Safe path: weight = sgn · e^{−lam}, so G = sgn e^{(s − shift) − lam} (+ the column's term).
  std::vector<float> lam(fast ? 0 : nv), sgn(fast ? 0 : nv);
  for (int64_t k = 0; !fast && k < nv; ++k) {
    const float w = wp[k];
    lam[k] = static_cast<float>(-std::log(std::abs(static_cast<double>(w))));  // +inf for w = 0
    sgn[k] = w > 0.0f ? 1.0f : (w < 0.0f ? -1.0f : w);                          // 0, or NaN for NaN
  }
  // Pointers into u/shift/lam/sgn for row block i0 and column block j0: global rows in self mode,
  // owned rows (offset r0) in keys mode, where the columns (keys) carry no terms.
  const int64_t off = kp != nullptr ? r0 : 0;
  const TileOps& ops = select_ops();
  const TileShape ts = tile_shape();
  const std::vector<Tile> tiles = kp != nullptr ? make_key_schedule(r0, rc, nk, ts.rows, ts.cols)
                                                 : make_schedule(n, r0, rc, ts.rows, ts.cols);
  const int64_t tasks = num_tasks(tiles.size());
  // Task 0 accumulates straight into `out`; the others into their own (rc, D) partials. Each task
  // zeroes its own buffer and the merge below is serial (O(rc·D), ~1 ms at 2B = 16384): one
  // parallel region per call, because on a loaded machine every region start costs a wake-up.
  at::Tensor parts = at::empty({tasks - 1, rc, d}, z.options());

  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    at::AutoDispatchBelowADInplaceOrView guard;
    SingleThreadedBlas blas_guard;
    at::Tensor buf = at::empty({ts.rows * std::max(ts.rows, ts.cols)}, z.options());
    std::vector<int64_t> skip(ts.rows);
    for (int64_t task = begin; task < end; ++task) {
      at::Tensor dz = task == 0 ? out : parts.select(0, task - 1);
      std::fill_n(dz.data_ptr<float>(), rc * d, 0.0f);
      for (size_t k = task; k < tiles.size(); k += tasks) {
        const Tile& tl = tiles[k];
        at::Tensor g = buf.narrow(0, 0, tl.ni * tl.nj).view({tl.ni, tl.nj});
        const at::Tensor zi = z.narrow(0, tl.i0, tl.ni), zj = cols_src.narrow(0, tl.j0, tl.nj);
        at::mm_out(g, zi, zj.t());
        const int64_t ri = tl.i0 - off;
        const bool col_terms = kp == nullptr;
        TileBwd a{g.data_ptr<float>(), tl.ni, tl.nj, tl.nj, static_cast<float>(inv_tau),
                  static_cast<float>(c), tl.kind == kDiag, tile_skips(ex, r0, tl, skip.data()),
                  fast ? u.data() + ri : nullptr, fast && col_terms ? u.data() + tl.j0 : nullptr,
                  fast ? nullptr : sh + ri, !fast && col_terms ? sh + tl.j0 : nullptr,
                  fast ? nullptr : lam.data() + ri, !fast && col_terms ? lam.data() + tl.j0 : nullptr,
                  fast ? nullptr : sgn.data() + ri, !fast && col_terms ? sgn.data() + tl.j0 : nullptr};
        if (fast) {
          ops.bwd_fast(a);
        } else {
          ops.bwd_safe(a);
        }
        dz.narrow(0, tl.i0 - r0, tl.ni).addmm_(g, zj);
        if (tl.kind == kSym) dz.narrow(0, tl.j0 - r0, tl.nj).addmm_(g.t(), zi);
      }
    }
  });

  // out = (out + parts[0] + parts[1] + …) · inv_tau, each element summed in task order.
  float* o = out.data_ptr<float>();
  const float* p = parts.const_data_ptr<float>();
  const int64_t total = rc * d;
  const float scale = static_cast<float>(inv_tau);
  for (int64_t x = 0; x < total; ++x) {
    float acc = o[x];
    for (int64_t task = 1; task < tasks; ++task) acc += p[(task - 1) * total + x];
    o[x] = acc * scale;
  }
  return out;
}

}  // namespace

// Which elementwise kernels run here ("avx2" or "generic"), for simclr_fast._C.cpu_isa().
const char* simclr_fast_cpu_isa() { return select_ops().isa; }

TORCH_LIBRARY_FRAGMENT(simclr_fast, m) {
  m.def(
      "ntxent_fwd_cpu(Tensor z, int row_start, int row_count, float inv_tau, Tensor shift, "
      "Tensor? exclude=None, Tensor? keys=None) -> Tensor");
  m.def(
      "ntxent_bwd_cpu(Tensor z, Tensor shift, Tensor weight, int row_start, int row_count, float inv_tau, "
      "Tensor? exclude=None, Tensor? keys=None) -> Tensor");
}

TORCH_LIBRARY_IMPL(simclr_fast, CPU, m) {
  m.impl("ntxent_fwd_cpu", &ntxent_fwd_cpu);
  m.impl("ntxent_bwd_cpu", &ntxent_bwd_cpu);
}
