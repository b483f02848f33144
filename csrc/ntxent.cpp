// Fused NT-Xent on the CPU: the two ops of the backend contract (simclr_fast/backends/base.py),
// registered as torch ops simclr_fast::ntxent_fwd_cpu / simclr_fast::ntxent_bwd_cpu.
//
// z (N, D) holds normalized fp32 embeddings; the caller owns rows [row_start, row_start + row_count)
// ("owned", O). With s_ij = z_i · z_j · inv_tau and the diagonal excluded (DESIGN.md §2, SimCLR
// arXiv 2002.05709):
//
//   forward   lse_k = log Σ_{j≠k} e^{s_kj}                                       for k in O
//   backward  dz_k  = inv_tau Σ_{j≠k} (coef_k e^{s_kj − lse_k} + coef_j e^{s_kj − lse_j}) z_j
//                   = inv_tau (G z)_k,  G = diag(coef) P + (diag(coef) P)ᵀ  symmetric      for k in O
//
// Schedule. O is cut into tiles of T rows. The square block O x O is symmetric, so only tiles
// I <= J are visited: each S = z_I z_Jᵀ is computed once and serves its rows and, transposed, its
// columns (forward: row sums and column sums of e^{s}; backward: dz_I += G z_J and dz_J += Gᵀ z_I).
// That is N²·D FLOPs forward and 3·N²·D backward instead of 2 and 4 for a row-wise schedule. The
// columns outside O (only when the distributed layer hands us a sub-block) are rectangular tiles
// whose results feed the owned rows only. Tile products go through ATen's GEMM (MKL in the
// official wheels), one thread per product; the elementwise work runs in tile_kernels.h.
//
// Exponentials. Because z is normalized, |s| <= c := |inv_tau| · max_i |z_i|². With that fixed
// shift, e^{s − c} lies in [e^{−2c}, 1]: for c <= 40 it neither overflows nor leaves the normal
// range, so ONE exponential per pair serves both the row and the column sums (lse = c + log Σ),
// and in the backward G_kj = e^{s_kj − c} (u_k + u_j) with u = coef · e^{c − lse} (at most
// coef · e^{2c}; checked finite). For larger c (|τ| < 0.025 on normalized z) a safe path keeps
// per-tile maxima (online log-sum-exp, arXiv 1805.02867) and spends two exponentials per pair.
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
// default max(rows, kDefaultTileCols)).
constexpr int64_t kDefaultTileRows = 256;
constexpr int64_t kDefaultTileCols = 256;

// Largest shift c for the one-exponential path: e^{−2c} >= e^{−80} ≈ 1.8e-35 stays above
// FLT_MIN ≈ 1.2e-38. A bound from fp32's range, not a measurement.
constexpr double kFastShiftMax = 40.0;
// Largest |u_k| = |coef_k| e^{c − lse_k} the fast backward accepts: (u_k + u_j) and G stay finite.
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

// Tiles of the owned rows O = [r0, r0 + rc) against all N columns, row block by row block: the
// square diagonal tile, then the columns right of it inside O and the columns outside O, in
// chunks of `tj` columns (a chunk needs no square shape: only the diagonal tile does).
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

// The fixed shift c = |inv_tau| · max_i |z_i|² (an upper bound of every |s_ij|).
double shift_bound(const float* z, int64_t n, int64_t d, double inv_tau) {
  double mx = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    double sq = 0.0;
    for (int64_t k = 0; k < d; ++k) sq += static_cast<double>(z[i * d + k]) * z[i * d + k];
    mx = std::max(mx, sq);
  }
  return std::abs(inv_tau) * mx;
}

void check_inputs(const at::Tensor& z, int64_t row_start, int64_t row_count) {
  TORCH_CHECK(z.device().is_cpu(), "ntxent_*_cpu: z must be a CPU tensor, got ", z.device());
  TORCH_CHECK(z.scalar_type() == at::kFloat, "ntxent_*_cpu: z must be float32, got ", z.scalar_type(),
              " (the Python layer converts bf16/fp16 to fp32; use backend='torch' for float64)");
  TORCH_CHECK(z.dim() == 2, "ntxent_*_cpu: z must be 2-D (N, D), got ", z.dim(), " dims");
  TORCH_CHECK(z.is_contiguous(), "ntxent_*_cpu: z must be contiguous");
  TORCH_CHECK(z.size(1) >= 1, "ntxent_*_cpu: z must have D >= 1 columns");
  TORCH_CHECK(row_start >= 0 && row_count >= 0 && row_start + row_count <= z.size(0),
              "ntxent_*_cpu: rows [", row_start, ", ", row_start + row_count, ") out of range for N = ",
              z.size(0));
}

void check_vector(const at::Tensor& v, const char* name, int64_t n) {
  TORCH_CHECK(v.device().is_cpu() && v.scalar_type() == at::kFloat && v.dim() == 1 && v.size(0) == n &&
                  v.is_contiguous(),
              "ntxent_bwd_cpu: ", name, " must be a contiguous float32 CPU tensor of shape (", n, "), got ",
              v.scalar_type(), " of shape ", v.sizes());
}

int64_t num_tasks(size_t tiles) {
  return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), static_cast<int64_t>(tiles)));
}

at::Tensor ntxent_fwd_cpu(const at::Tensor& z_in, int64_t row_start, int64_t row_count, double inv_tau) {
  check_inputs(z_in, row_start, row_count);
  const at::Tensor z = z_in.detach();
  const int64_t n = z.size(0), d = z.size(1), rc = row_count, r0 = row_start;
  at::Tensor out = at::empty({rc}, z.options());
  if (rc == 0) return out;
  const float* zp = z.const_data_ptr<float>();
  const double c = shift_bound(zp, n, d, inv_tau);
  const bool fast = c <= kFastShiftMax;
  const TileOps& ops = select_ops();
  const TileShape ts = tile_shape();
  const std::vector<Tile> tiles = make_schedule(n, r0, rc, ts.rows, ts.cols);
  const int64_t tasks = num_tasks(tiles.size());
  std::vector<double> sums(tasks * rc, 0.0), maxs(fast ? 0 : tasks * rc, 0.0);

  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    at::AutoDispatchBelowADInplaceOrView guard;  // plain tensors: skip autograd in worker threads
    SingleThreadedBlas blas_guard;
    at::Tensor buf = at::empty({ts.rows * std::max(ts.rows, ts.cols)}, z.options());
    std::vector<float> scratch(2 * std::max(ts.rows, ts.cols) + ts.rows);
    for (int64_t task = begin; task < end; ++task) {
      double* sum = sums.data() + task * rc;
      double* mx = fast ? nullptr : maxs.data() + task * rc;
      for (size_t k = task; k < tiles.size(); k += tasks) {
        const Tile& tl = tiles[k];
        at::Tensor s = buf.narrow(0, 0, tl.ni * tl.nj).view({tl.ni, tl.nj});
        at::mm_out(s, z.narrow(0, tl.i0, tl.ni), z.narrow(0, tl.j0, tl.nj).t());
        const bool cols = tl.kind == kSym;
        TileFwd a{s.const_data_ptr<float>(), tl.ni, tl.nj, tl.nj, static_cast<float>(inv_tau),
                  static_cast<float>(c), tl.kind == kDiag,
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

  float* o = out.data_ptr<float>();
  for (int64_t i = 0; i < rc; ++i) {
    if (fast) {
      double total = 0.0;
      for (int64_t task = 0; task < tasks; ++task) total += sums[task * rc + i];
      o[i] = static_cast<float>(c + std::log(total));  // total == 0 only for N == 1: lse = -inf
    } else {
      double m = 0.0, l = 0.0;
      for (int64_t task = 0; task < tasks; ++task) {
        const double m2 = maxs[task * rc + i], l2 = sums[task * rc + i];
        if (l2 == 0.0) continue;
        if (l == 0.0) {
          m = m2;
          l = l2;
          continue;
        }
        const double mm = std::max(m, m2);
        l = l * std::exp(m - mm) + l2 * std::exp(m2 - mm);
        m = mm;
      }
      o[i] = static_cast<float>(m + std::log(l));
    }
  }
  return out;
}

at::Tensor ntxent_bwd_cpu(const at::Tensor& z_in, const at::Tensor& lse_in, const at::Tensor& coef_in,
                          int64_t row_start, int64_t row_count, double inv_tau) {
  check_inputs(z_in, row_start, row_count);
  const int64_t n = z_in.size(0), d = z_in.size(1), rc = row_count, r0 = row_start;
  check_vector(lse_in, "lse", n);
  check_vector(coef_in, "coef", n);
  const at::Tensor z = z_in.detach(), lse = lse_in.detach(), coef = coef_in.detach();
  at::Tensor out = at::empty({rc, d}, z.options());
  if (rc == 0) return out;
  const float* zp = z.const_data_ptr<float>();
  const float* lp = lse.const_data_ptr<float>();
  const float* cp = coef.const_data_ptr<float>();
  const double c = shift_bound(zp, n, d, inv_tau);
  bool fast = c <= kFastShiftMax;
  std::vector<float> u(fast ? n : 0);
  for (int64_t k = 0; fast && k < n; ++k) {
    const double uk = static_cast<double>(cp[k]) * std::exp(c - static_cast<double>(lp[k]));
    fast = std::abs(uk) <= kFastUMax;  // false for inf/NaN too
    u[k] = static_cast<float>(uk);
  }
  const TileOps& ops = select_ops();
  const TileShape ts = tile_shape();
  const std::vector<Tile> tiles = make_schedule(n, r0, rc, ts.rows, ts.cols);
  const int64_t tasks = num_tasks(tiles.size());
  // Task 0 accumulates straight into `out`; the others into their own (rc, D) partials. Each task
  // zeroes its own buffer and the merge below is serial (O(rc·D), ~1 ms at 2B = 16384): one
  // parallel region per call, because on a loaded machine every region start costs a wake-up.
  at::Tensor parts = at::empty({tasks - 1, rc, d}, z.options());

  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    at::AutoDispatchBelowADInplaceOrView guard;
    SingleThreadedBlas blas_guard;
    at::Tensor buf = at::empty({ts.rows * std::max(ts.rows, ts.cols)}, z.options());
    for (int64_t task = begin; task < end; ++task) {
      at::Tensor dz = task == 0 ? out : parts.select(0, task - 1);
      std::fill_n(dz.data_ptr<float>(), rc * d, 0.0f);
      for (size_t k = task; k < tiles.size(); k += tasks) {
        const Tile& tl = tiles[k];
        at::Tensor g = buf.narrow(0, 0, tl.ni * tl.nj).view({tl.ni, tl.nj});
        const at::Tensor zi = z.narrow(0, tl.i0, tl.ni), zj = z.narrow(0, tl.j0, tl.nj);
        at::mm_out(g, zi, zj.t());
        TileBwd a{g.data_ptr<float>(), tl.ni, tl.nj, tl.nj, static_cast<float>(inv_tau),
                  static_cast<float>(c), tl.kind == kDiag,
                  fast ? u.data() + tl.i0 : nullptr, fast ? u.data() + tl.j0 : nullptr,
                  lp + tl.i0, lp + tl.j0, cp + tl.i0, cp + tl.j0};
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
  m.def("ntxent_fwd_cpu(Tensor z, int row_start, int row_count, float inv_tau) -> Tensor");
  m.def(
      "ntxent_bwd_cpu(Tensor z, Tensor lse, Tensor coef, int row_start, int row_count, float inv_tau) -> "
      "Tensor");
}

TORCH_LIBRARY_IMPL(simclr_fast, CPU, m) {
  m.impl("ntxent_fwd_cpu", &ntxent_fwd_cpu);
  m.impl("ntxent_bwd_cpu", &ntxent_bwd_cpu);
}
