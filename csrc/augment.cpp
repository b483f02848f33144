// One SimCLR view of a batch on the CPU, image by image: registered as the torch op
// simclr_fast::augment_view_cpu and called by simclr_fast/augment.py (backend "cpu").
//
// Why a kernel of our own: the tensor-op path (Kornia's functional ops plus our own per-image
// jitter order) makes ~20 passes over the whole batch in fp32, each one a trip through memory;
// at 224 px that path measured 18-23 CPU-ms per image (two views) on the 2-core dev box
// (2026-11-22), slower than the per-image PIL pipeline it replaces. Here each image goes through
// every op while it sits in cache (3 x 224 x 224 fp32 = 600 KB), reading uint8 pixels directly:
// 3.4-3.7 CPU-ms per image at 224 px, 3.1x the per-image PIL pipeline on the same two cores
// (`simclr-fast bench augment`, 2026-11-22).
//
// The result equals the tensor-op path of simclr_fast/augment.py for the same random parameters,
// up to fp32 rounding (tests/test_augment_kernel.py checks the two against each other,
// tests/test_augment.py both against Kornia's ops):
//
//   resized crop, flip,  grid_sample(align_corners=False) on the image's affine grid theta
//   rotation, shear      (2 x 3, from Python), bicubic (A = -0.75), bilinear or nearest; bicubic
//                        is clipped to [0, 1]. Border padding with an axis-aligned theta (the
//                        SimCLR crops) runs as two 1-D passes; zeros padding (rotated views)
//                        or nearest samples pixel by pixel
//   colour jitter        the four ops in this image's order, clipped after each:
//                        brightness x·f; contrast x·f + mean(gray)·(1 − f);
//                        saturation x·f + gray·(1 − f); hue: HSV hue rotated by f turns
//   grayscale            gray = 0.299 r + 0.587 g + 0.114 b in every channel (ITU-R 601)
//   Gaussian blur        K taps, w_i ∝ exp(−(i − K/2)² / 2σ²), along W then H, reflect border
//   solarize             x >= threshold → 1 − x
//   noise                x + noise_std · n, n given (drawn in Python), clipped to [0, 1]
//   erase                0 in a box (fractions of the image), pixel centres inside it
//   normalize, cast      (x − mean_c) / std_c, written as fp32/bf16/fp16 with any output strides
//
// Threads: at::parallel_for over images; each image is independent, so results do not depend on
// the thread count. (Handing images out one at a time from an atomic counter instead of in two
// fixed halves measured no faster: 476-534 vs 506-559 img/s, 2 threads, 2026-11-22.)
//
// ISA: compiled for baseline x86-64 like the rest of the extension (SSE2; -O3 vectorizes the row
// loops). Compiling this file for AVX2 + FMA measured ~25 % faster at 224 px (1.12-1.31 vs
// 1.50-1.65 ms per view, one thread, 2026-11-22); shipping that needs the per-ISA split the tile
// kernels use (tile_api.h), not done.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#include <xmmintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <type_traits>
#include <vector>

namespace {

constexpr float kCubicA = -0.75f;  // grid_sample's bicubic (Keys' cubic convolution)
constexpr float kGrayR = 0.299f, kGrayG = 0.587f, kGrayB = 0.114f;

inline float clip01(float v) { return std::min(std::max(v, 0.0f), 1.0f); }

// grid_sample's bicubic weights of the taps at offsets -1, 0, 1, 2 from floor(pos), t = pos − floor.
inline void cubic_weights(float t, float* w) {
  const float t1 = t + 1.0f, t2 = 1.0f - t, t3 = 2.0f - t;
  w[0] = ((kCubicA * t1 - 5.0f * kCubicA) * t1 + 8.0f * kCubicA) * t1 - 4.0f * kCubicA;
  w[1] = ((kCubicA + 2.0f) * t - (kCubicA + 3.0f)) * t * t + 1.0f;
  w[2] = ((kCubicA + 2.0f) * t2 - (kCubicA + 3.0f)) * t2 * t2 + 1.0f;
  w[3] = ((kCubicA * t3 - 5.0f * kCubicA) * t3 + 8.0f * kCubicA) * t3 - 4.0f * kCubicA;
}

// Interpolation taps of one axis: output i reads the 4 consecutive inputs start[i] .. start[i] + 3
// with weights w[4i .. 4i + 3]. Indices are not clamped: inputs beyond the edge repeat it
// (padding_mode="border"), which the callers arrange. Bilinear uses the middle two taps.
struct Axis {
  std::vector<int64_t> start;
  std::vector<float> w;
  int64_t lo = 0, hi = 0;  // smallest and largest input index read (unclamped)
};

// Output i of `out` samples normalized coordinate g = half · u_i + centre, u_i = (2i + 1)/out − 1,
// at input position ((g + 1) · in − 1) / 2 (align_corners=False). `scale` multiplies every weight
// (1/255 folds the uint8 scaling in).
void build_axis(Axis& a, int64_t out, int64_t in, float centre, float half, bool bicubic, float scale) {
  a.start.resize(out);
  a.w.resize(out * 4);
  a.lo = std::numeric_limits<int64_t>::max();
  a.hi = std::numeric_limits<int64_t>::min();
  const float fin = static_cast<float>(in), fout = static_cast<float>(out);
  for (int64_t i = 0; i < out; ++i) {
    const float u = (static_cast<float>(i) * 2.0f + 1.0f) / fout - 1.0f;
    const float g = half * u + centre;
    float pos = (g + 1.0f) * fin * 0.5f - 0.5f;
    // grid_sample clips the bilinear coordinate itself (border); bicubic taps are clipped one by one
    if (!bicubic) pos = std::min(std::max(pos, 0.0f), fin - 1.0f);
    const float base = std::floor(pos);
    const float t = pos - base;
    float* w = a.w.data() + i * 4;
    if (bicubic) {
      cubic_weights(t, w);
    } else {
      w[0] = 0.0f;
      w[1] = 1.0f - t;
      w[2] = t;
      w[3] = 0.0f;
    }
    for (int k = 0; k < 4; ++k) w[k] *= scale;
    a.start[i] = static_cast<int64_t>(base) - 1;
    a.lo = std::min(a.lo, a.start[i]);
    a.hi = std::max(a.hi, a.start[i] + 3);
  }
}

enum Interp { kBilinear = 0, kBicubic = 1, kNearest = 2 };

struct Config {
  int64_t channels, in_h, in_w, out_h, out_w;
  int64_t interp;
  bool zeros_padding, hue;
  int64_t blur_kernel;
  float solarize_threshold, noise_std;
  const float* mean;  // nullptr: no normalization
  const float* std;
};

// Per-thread buffers, reused from image to image.
struct Scratch {
  Axis ax, ay;
  std::vector<float> img, tmp, row, kernel;
};

// out[j] = Σ_k w[4j + k] · t[start[j] + k], j < n, clipped to [0, 1] when `clip`.
void horizontal_taps(const float* t, const int64_t* start, const float* w, int64_t n, bool clip,
                     float* out) {
  int64_t j = 0;
#if defined(__SSE2__)
  // Four outputs at a time: their 4-tap products, transposed, summed in tap order (the order of
  // the scalar loop below, so both give the same bits).
  const __m128 zero = _mm_setzero_ps(), one = _mm_set1_ps(1.0f);
  for (; j + 4 <= n; j += 4) {
    __m128 a0 = _mm_mul_ps(_mm_loadu_ps(t + start[j]), _mm_loadu_ps(w + 4 * j));
    __m128 a1 = _mm_mul_ps(_mm_loadu_ps(t + start[j + 1]), _mm_loadu_ps(w + 4 * j + 4));
    __m128 a2 = _mm_mul_ps(_mm_loadu_ps(t + start[j + 2]), _mm_loadu_ps(w + 4 * j + 8));
    __m128 a3 = _mm_mul_ps(_mm_loadu_ps(t + start[j + 3]), _mm_loadu_ps(w + 4 * j + 12));
    _MM_TRANSPOSE4_PS(a0, a1, a2, a3);
    __m128 v = _mm_add_ps(_mm_add_ps(_mm_add_ps(a0, a1), a2), a3);
    if (clip) v = _mm_min_ps(_mm_max_ps(v, zero), one);
    _mm_storeu_ps(out + j, v);
  }
#endif
  for (; j < n; ++j) {
    const float* p = t + start[j];
    const float* q = w + 4 * j;
    const float v = p[0] * q[0] + p[1] * q[1] + p[2] * q[2] + p[3] * q[3];
    out[j] = clip ? clip01(v) : v;
  }
}

// Axis-aligned resample of one image with border padding: src (C, H, W) contiguous -> s.img
// (C, OH, OW), theta = [[sx, 0, cx], [0, sy, cy]]. Two 1-D passes: along H into s.tmp (the input
// columns the row taps need, edges repeated), then along W.
template <typename In>
void resample_separable(const In* src, const float* theta, const Config& cfg, Scratch& s) {
  const float sx = theta[0], cx = theta[2], sy = theta[4], cy = theta[5];
  const bool bicubic = cfg.interp == kBicubic;
  const float scale = std::is_same_v<In, uint8_t> ? 1.0f / 255.0f : 1.0f;
  build_axis(s.ax, cfg.out_w, cfg.in_w, cx, sx, bicubic, 1.0f);
  build_axis(s.ay, cfg.out_h, cfg.in_h, cy, sy, bicubic, scale);
  for (auto& v : s.ax.start) v -= s.ax.lo;  // relative to the first column held in s.tmp
  const int64_t lo = s.ax.lo, ncols = s.ax.hi - lo + 1;
  const int64_t c0 = std::max(lo, int64_t{0}), c1 = std::min(s.ax.hi, cfg.in_w - 1);  // in the image
  const int64_t oh = cfg.out_h, ow = cfg.out_w, plane = oh * ow, inner = c1 - c0 + 1;
  s.tmp.resize(oh * ncols);
  for (int64_t c = 0; c < cfg.channels; ++c) {
    const In* base = src + c * cfg.in_h * cfg.in_w + c0;
    float* out = s.img.data() + c * plane;
    for (int64_t y = 0; y < oh; ++y) {
      float* row = s.tmp.data() + y * ncols;
      float* t = row + (c0 - lo);
      const int64_t* st = s.ay.start.data() + y;
      const float* wy = s.ay.w.data() + y * 4;
      bool first = true;
      for (int k = 0; k < 4; ++k) {
        const float w = wy[k];
        if (w == 0.0f) continue;  // bilinear's outer taps, bicubic at t = 0
        const int64_t iy = std::min(std::max(*st + k, int64_t{0}), cfg.in_h - 1);
        const In* r = base + iy * cfg.in_w;
        if (first) {
          for (int64_t x = 0; x < inner; ++x) t[x] = w * static_cast<float>(r[x]);
          first = false;
        } else {
          for (int64_t x = 0; x < inner; ++x) t[x] += w * static_cast<float>(r[x]);
        }
      }
      if (first) std::fill(t, t + inner, 0.0f);
      std::fill(row, t, t[0]);                                // columns left of the image
      std::fill(t + inner, row + ncols, t[inner - 1]);        // and right of it
      horizontal_taps(row, s.ax.start.data(), s.ax.w.data(), ow, bicubic, out + y * ow);
    }
  }
}

// Any theta, either padding, any mode, output pixel by output pixel: grid_sample's own steps. Used
// for rotated/sheared views (small images: the digits recipe) and nearest.
template <typename In>
void resample_general(const In* src, const float* theta, const Config& cfg, Scratch& s) {
  const int64_t ih = cfg.in_h, iw = cfg.in_w, oh = cfg.out_h, ow = cfg.out_w, plane = oh * ow;
  const float fw = static_cast<float>(iw), fh = static_cast<float>(ih);
  const float scale = std::is_same_v<In, uint8_t> ? 1.0f / 255.0f : 1.0f;
  const bool zeros = cfg.zeros_padding;
  // tap value with the padding rule; zeros: 0 outside, border: the clamped index
  auto tap = [&](const In* p, int64_t y, int64_t x) -> float {
    if (zeros) {
      if (y < 0 || y >= ih || x < 0 || x >= iw) return 0.0f;
    } else {
      y = std::min(std::max(y, int64_t{0}), ih - 1);
      x = std::min(std::max(x, int64_t{0}), iw - 1);
    }
    return static_cast<float>(p[y * iw + x]);
  };
  for (int64_t y = 0; y < oh; ++y) {
    const float v = (static_cast<float>(y) * 2.0f + 1.0f) / static_cast<float>(oh) - 1.0f;
    for (int64_t x = 0; x < ow; ++x) {
      const float u = (static_cast<float>(x) * 2.0f + 1.0f) / static_cast<float>(ow) - 1.0f;
      float px = ((theta[0] * u + theta[1] * v + theta[2]) + 1.0f) * fw * 0.5f - 0.5f;
      float py = ((theta[3] * u + theta[4] * v + theta[5]) + 1.0f) * fh * 0.5f - 0.5f;
      if (cfg.interp != kBicubic && !zeros) {  // border clips the coordinate itself
        px = std::min(std::max(px, 0.0f), fw - 1.0f);
        py = std::min(std::max(py, 0.0f), fh - 1.0f);
      }
      for (int64_t c = 0; c < cfg.channels; ++c) {
        const In* p = src + c * ih * iw;
        float val;
        if (cfg.interp == kNearest) {
          val = tap(p, static_cast<int64_t>(std::nearbyint(py)), static_cast<int64_t>(std::nearbyint(px)));
        } else {
          const float bx = std::floor(px), by = std::floor(py);
          const float tx = px - bx, ty = py - by;
          const int64_t x0 = static_cast<int64_t>(bx), y0 = static_cast<int64_t>(by);
          if (cfg.interp == kBilinear) {
            val = tap(p, y0, x0) * (1.0f - tx) * (1.0f - ty) + tap(p, y0, x0 + 1) * tx * (1.0f - ty) +
                  tap(p, y0 + 1, x0) * (1.0f - tx) * ty + tap(p, y0 + 1, x0 + 1) * tx * ty;
          } else {
            float wx[4], wy[4];
            cubic_weights(tx, wx);
            cubic_weights(ty, wy);
            val = 0.0f;
            for (int j = 0; j < 4; ++j) {
              float row = 0.0f;
              for (int i = 0; i < 4; ++i) row += wx[i] * tap(p, y0 - 1 + j, x0 - 1 + i);
              val += wy[j] * row;
            }
          }
        }
        val *= scale;
        s.img[c * plane + y * ow + x] = cfg.interp == kBicubic ? clip01(val) : val;
      }
    }
  }
}

// Mean of the grayscale image: 8 float partial sums per block of 1024 pixels (so the compiler
// vectorizes the reduction; float sums are not reassociated on their own), blocks added in double.
double gray_mean(const float* img, int64_t channels, int64_t n) {
  double sum = 0.0;
  const float *r = img, *g = img + (channels == 3 ? n : 0), *b = img + (channels == 3 ? 2 * n : 0);
  const float wr = channels == 3 ? kGrayR : 1.0f, wg = channels == 3 ? kGrayG : 0.0f,
              wb = channels == 3 ? kGrayB : 0.0f;
  constexpr int64_t kBlock = 1024;
  for (int64_t start = 0; start < n; start += kBlock) {
    const int64_t stop = std::min(start + kBlock, n);
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = start;
    for (; i + 8 <= stop; i += 8) {
      for (int l = 0; l < 8; ++l) acc[l] += r[i + l] * wr + g[i + l] * wg + b[i + l] * wb;
    }
    for (; i < stop; ++i) acc[0] += r[i] * wr + g[i] * wg + b[i] * wb;
    double block = 0.0;
    for (int l = 0; l < 8; ++l) block += acc[l];
    sum += block;
  }
  return sum / static_cast<double>(n);
}

// x <- clip(x · f + add) on every channel.
void blend_const(float* img, int64_t count, float f, float add) {
  for (int64_t i = 0; i < count; ++i) img[i] = clip01(img[i] * f + add);
}

// x <- clip(x · f + gray · (1 − f)) (saturation); a 1-channel image is its own gray.
void saturate(float* img, int64_t channels, int64_t n, float f) {
  const float g1 = 1.0f - f;
  if (channels != 3) {
    for (int64_t i = 0; i < n; ++i) img[i] = clip01(img[i] * f + img[i] * g1);
    return;
  }
  float *r = img, *g = img + n, *b = img + 2 * n;
  for (int64_t i = 0; i < n; ++i) {
    const float gr = (r[i] * kGrayR + g[i] * kGrayG + b[i] * kGrayB) * g1;
    r[i] = clip01(r[i] * f + gr);
    g[i] = clip01(g[i] * f + gr);
    b[i] = clip01(b[i] * f + gr);
  }
}

// Rotate the HSV hue by `shift` turns without leaving RGB: v = max and c = max − min are kept, and
// channel n (5, 3, 1 for R, G, B) becomes v − c · clip(min(k, 4 − k), 0, 1), k = (h' + n) mod 6,
// h' the hue in sextants plus 6 · shift (the formula of augment.py::_hue_shift). Branch-free so
// that the compiler vectorizes it.
void hue_shift(float* img, int64_t n, float shift) {
  float *r = img, *g = img + n, *b = img + 2 * n;
  const float add = 6.0f * shift;
  for (int64_t i = 0; i < n; ++i) {
    const float rv = r[i], gv = g[i], bv = b[i];
    const float v = std::max(std::max(rv, gv), bv);
    const float m = std::min(std::min(rv, gv), bv);
    const float c = v - m;
    const float inv = 1.0f / (c > 0.0f ? c : 1.0f);
    const float hr = (gv - bv) * inv, hg = (bv - rv) * inv + 2.0f, hb = (rv - gv) * inv + 4.0f;
    float h = v == rv ? hr : (v == gv ? hg : hb);
    h += add;  // in [-4, 8): torch.remainder(h, 6) is one conditional step, exact like fmod
    h = h < 0.0f ? h + 6.0f : (h >= 6.0f ? h - 6.0f : h);
    float kr = h + 5.0f, kg = h + 3.0f, kb = h + 1.0f;
    kr = kr >= 6.0f ? kr - 6.0f : kr;
    kg = kg >= 6.0f ? kg - 6.0f : kg;
    kb = kb >= 6.0f ? kb - 6.0f : kb;
    kr = clip01(std::min(kr, 4.0f - kr));
    kg = clip01(std::min(kg, 4.0f - kg));
    kb = clip01(std::min(kb, 4.0f - kb));
    r[i] = v - kr * c;
    g[i] = v - kg * c;
    b[i] = v - kb * c;
  }
}

void to_gray(float* img, int64_t n) {
  float *r = img, *g = img + n, *b = img + 2 * n;
  for (int64_t i = 0; i < n; ++i) {
    const float v = r[i] * kGrayR + g[i] * kGrayG + b[i] * kGrayB;
    r[i] = v;
    g[i] = v;
    b[i] = v;
  }
}

// torch's "reflect" padding (edge not repeated), bouncing as often as needed.
inline int64_t reflect(int64_t i, int64_t n) {
  if (n == 1) return 0;
  const int64_t period = 2 * (n - 1);
  i %= period;
  if (i < 0) i += period;
  return i < n ? i : period - i;
}

// Separable Gaussian blur of every plane of s.img, along W then H (Kornia's filter2d_separable).
void blur(float sigma, const Config& cfg, Scratch& s) {
  const int64_t k = cfg.blur_kernel, half = k / 2, oh = cfg.out_h, ow = cfg.out_w;
  s.kernel.resize(k);
  double total = 0.0;
  for (int64_t i = 0; i < k; ++i) {
    const double d = static_cast<double>(i - half);
    const double w = std::exp(-d * d / (2.0 * static_cast<double>(sigma) * sigma));
    s.kernel[i] = static_cast<float>(w);
    total += w;
  }
  for (auto& w : s.kernel) w = static_cast<float>(w / total);
  // Outer taps weighing less than 2^-24 (below fp32 resolution next to the centre tap's share) are
  // skipped: at σ = 1 that is 11 of the 23 taps at 224 px, and no output moves by more than ~1 ulp.
  int64_t first = 0;
  while (first < half && s.kernel[first] < 0x1p-24f) ++first;
  const int64_t last = k - 1 - first;  // taps [first, last], symmetric
  const float* kw = s.kernel.data();
  s.row.resize(ow + 2 * half);
  s.tmp.resize(oh * ow);
  for (int64_t c = 0; c < cfg.channels; ++c) {
    float* plane = s.img.data() + c * oh * ow;
    // along W: each row, reflect-padded, into s.tmp
    for (int64_t y = 0; y < oh; ++y) {
      const float* src = plane + y * ow;
      float* pad = s.row.data();
      std::copy(src, src + ow, pad + half);
      for (int64_t x = 0; x < half; ++x) {
        pad[x] = src[reflect(x - half, ow)];
        pad[half + ow + x] = src[reflect(ow + x, ow)];
      }
      float* dst = s.tmp.data() + y * ow;
      for (int64_t x = 0; x < ow; ++x) dst[x] = kw[first] * pad[x + first];
      for (int64_t i = first + 1; i <= last; ++i) {
        const float w = kw[i];
        const float* p = pad + i;
        for (int64_t x = 0; x < ow; ++x) dst[x] += w * p[x];
      }
    }
    // along H: from s.tmp back into the plane
    for (int64_t y = 0; y < oh; ++y) {
      float* dst = plane + y * ow;
      const float* r0 = s.tmp.data() + reflect(y - half + first, oh) * ow;
      for (int64_t x = 0; x < ow; ++x) dst[x] = kw[first] * r0[x];
      for (int64_t i = first + 1; i <= last; ++i) {
        const float w = kw[i];
        const float* r = s.tmp.data() + reflect(y - half + i, oh) * ow;
        for (int64_t x = 0; x < ow; ++x) dst[x] += w * r[x];
      }
    }
  }
}

template <typename Out>
void store(const float* img, const Config& cfg, Out* dst, int64_t sc, int64_t sh, int64_t sw) {
  const int64_t oh = cfg.out_h, ow = cfg.out_w;
  for (int64_t c = 0; c < cfg.channels; ++c) {
    const float* p = img + c * oh * ow;
    const float mean = cfg.mean ? cfg.mean[c] : 0.0f;
    const float std = cfg.std ? cfg.std[c] : 1.0f;
    for (int64_t y = 0; y < oh; ++y) {
      Out* o = dst + c * sc + y * sh;
      const float* q = p + y * ow;
      if (cfg.mean) {
        for (int64_t x = 0; x < ow; ++x) o[x * sw] = static_cast<Out>((q[x] - mean) / std);
      } else if (sw == 1) {
        for (int64_t x = 0; x < ow; ++x) o[x] = static_cast<Out>(q[x]);
      } else {
        for (int64_t x = 0; x < ow; ++x) o[x * sw] = static_cast<Out>(q[x]);
      }
    }
  }
}

enum Flag { kJitter = 0, kGray, kBlur, kSolarize, kNoise, kErase, kFlags };

// Zero the pixels whose centres ((i + 0.5) / size, fractions of the image) lie in the box.
void erase(float* img, const float* box, const Config& cfg) {
  const int64_t oh = cfg.out_h, ow = cfg.out_w;
  const float x0 = box[0], y0 = box[1], x1 = box[0] + box[2], y1 = box[1] + box[3];
  for (int64_t y = 0; y < oh; ++y) {
    const float cy = (static_cast<float>(y) + 0.5f) / static_cast<float>(oh);
    if (!(cy >= y0 && cy < y1)) continue;
    for (int64_t x = 0; x < ow; ++x) {
      const float cx = (static_cast<float>(x) + 0.5f) / static_cast<float>(ow);
      if (cx >= x0 && cx < x1) {
        for (int64_t c = 0; c < cfg.channels; ++c) img[(c * oh + y) * ow + x] = 0.0f;
      }
    }
  }
}

struct Params {  // per-image parameters, one row per image
  const float* theta;    // (B, 2, 3)
  const bool* flags;     // (B, kFlags)
  const float* factors;  // (B, 4)
  const int64_t* order;  // (B, 4)
  const float* sigma;    // (B,)
  const float* noise;    // (B, C, OH, OW) or nullptr
  const float* box;      // (B, 4)
};

template <typename In, typename Out>
void run(const at::Tensor& images, const Params& prm, const Config& cfg, at::Tensor& out) {
  const In* src = images.const_data_ptr<In>();
  Out* dst = out.data_ptr<Out>();
  const int64_t sb = out.stride(0), sc = out.stride(1), sh = out.stride(2), sw = out.stride(3);
  const int64_t in_image = cfg.channels * cfg.in_h * cfg.in_w;
  const int64_t n = cfg.out_h * cfg.out_w;
  at::parallel_for(0, images.size(0), 1, [&](int64_t begin, int64_t end) {
    Scratch s;
    s.img.resize(cfg.channels * n);
    for (int64_t b = begin; b < end; ++b) {
      const bool* f = prm.flags + b * kFlags;
      const float* theta = prm.theta + b * 6;
      if (!cfg.zeros_padding && cfg.interp != kNearest && theta[1] == 0.0f && theta[3] == 0.0f) {
        resample_separable(src + b * in_image, theta, cfg, s);
      } else {
        resample_general(src + b * in_image, theta, cfg, s);
      }
      float* img = s.img.data();
      if (f[kJitter]) {
        const float* fb = prm.factors + b * 4;
        for (int step = 0; step < 4; ++step) {
          const int64_t op = prm.order[b * 4 + step];
          const float x = fb[op];
          if (op == 0) {
            blend_const(img, cfg.channels * n, x, 0.0f);
          } else if (op == 1) {
            const float mean = static_cast<float>(gray_mean(img, cfg.channels, n));
            blend_const(img, cfg.channels * n, x, mean * (1.0f - x));
          } else if (op == 2) {
            saturate(img, cfg.channels, n, x);
          } else if (cfg.hue && cfg.channels == 3) {
            hue_shift(img, n, x);
          }
        }
      }
      if (f[kGray] && cfg.channels == 3) to_gray(img, n);
      if (f[kBlur] && cfg.blur_kernel > 1) blur(prm.sigma[b], cfg, s);
      if (f[kSolarize]) {
        const float thr = cfg.solarize_threshold;
        for (int64_t i = 0; i < cfg.channels * n; ++i) img[i] = img[i] >= thr ? 1.0f - img[i] : img[i];
      }
      if (f[kNoise] && prm.noise != nullptr) {
        const float* z = prm.noise + b * cfg.channels * n;
        const float sd = cfg.noise_std;
        for (int64_t i = 0; i < cfg.channels * n; ++i) img[i] = clip01(img[i] + z[i] * sd);
      }
      if (f[kErase]) erase(img, prm.box + b * 4, cfg);
      store(img, cfg, dst + b * sb, sc, sh, sw);
    }
  });
}

void check_params(const at::Tensor& t, const char* name, int64_t batch, std::optional<int64_t> cols,
                  at::ScalarType dtype) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == dtype && t.is_contiguous(), "augment_view_cpu: ",
              name, " must be a contiguous CPU tensor of dtype ", dtype, "; got ", t.scalar_type(), " on ",
              t.device());
  if (cols) {
    TORCH_CHECK(t.dim() == 2 && t.size(0) == batch && t.size(1) == *cols, "augment_view_cpu: ", name,
                " must have shape (", batch, ", ", *cols, "); got ", t.sizes());
  } else {
    TORCH_CHECK(t.dim() == 1 && t.size(0) == batch, "augment_view_cpu: ", name, " must have shape (",
                batch, "); got ", t.sizes());
  }
}

// images (B, C, H, W) uint8 (0-255) or fp32 (0-1), contiguous; theta (B, 2, 3) fp32, the affine
// map from output to input in normalized coordinates (affine_grid's); flags (B, 6) bool: jitter,
// grayscale, blur, solarize, noise, erase; factors (B, 4) fp32; order (B, 4) int64; sigma (B,)
// fp32; noise (B, C, OH, OW) fp32 or None; erase_box (B, 4) fp32 x0, y0, w, h in fractions of the
// output; mean/std (C,) fp32 or None; out (B, C, OH, OW) fp32, bf16 or fp16, any strides, written
// in place. interpolation: 0 bilinear, 1 bicubic, 2 nearest.
void augment_view_cpu(const at::Tensor& images, const at::Tensor& theta, const at::Tensor& flags,
                      const at::Tensor& factors, const at::Tensor& order, const at::Tensor& sigma,
                      const std::optional<at::Tensor>& noise, const at::Tensor& erase_box,
                      const std::optional<at::Tensor>& mean, const std::optional<at::Tensor>& std,
                      at::Tensor out, int64_t interpolation, bool zeros_padding, int64_t blur_kernel,
                      bool hue, double solarize_threshold, double noise_std) {
  TORCH_CHECK(images.device().is_cpu() && images.dim() == 4 && images.is_contiguous(),
              "augment_view_cpu: images must be a contiguous (B, C, H, W) CPU tensor; got shape ",
              images.sizes(), " on ", images.device());
  TORCH_CHECK(images.scalar_type() == at::kByte || images.scalar_type() == at::kFloat,
              "augment_view_cpu: images must be uint8 or float32; got ", images.scalar_type());
  const int64_t batch = images.size(0), channels = images.size(1);
  TORCH_CHECK(batch > 0 && images.size(2) > 0 && images.size(3) > 0, "augment_view_cpu: images is empty: ",
              images.sizes());
  TORCH_CHECK(theta.dim() == 3 && theta.size(0) == batch && theta.size(1) == 2 && theta.size(2) == 3,
              "augment_view_cpu: theta must have shape (", batch, ", 2, 3); got ", theta.sizes());
  TORCH_CHECK(theta.device().is_cpu() && theta.scalar_type() == at::kFloat && theta.is_contiguous(),
              "augment_view_cpu: theta must be a contiguous CPU float32 tensor");
  check_params(flags, "flags", batch, kFlags, at::kBool);
  check_params(factors, "factors", batch, 4, at::kFloat);
  check_params(order, "order", batch, 4, at::kLong);
  check_params(sigma, "sigma", batch, std::nullopt, at::kFloat);
  check_params(erase_box, "erase_box", batch, 4, at::kFloat);
  TORCH_CHECK(out.device().is_cpu() && out.dim() == 4 && out.size(0) == batch && out.size(1) == channels &&
                  out.size(2) > 0 && out.size(3) > 0,
              "augment_view_cpu: out must be a (", batch, ", ", channels, ", OH, OW) CPU tensor; got ",
              out.sizes());
  if (noise) {
    TORCH_CHECK(noise->device().is_cpu() && noise->scalar_type() == at::kFloat && noise->is_contiguous() &&
                    noise->sizes() == out.sizes(),
                "augment_view_cpu: noise must be a contiguous float32 CPU tensor shaped like out ",
                out.sizes(), "; got ", noise->sizes());
  }
  TORCH_CHECK(interpolation >= 0 && interpolation <= 2,
              "augment_view_cpu: interpolation must be 0 (bilinear), 1 (bicubic) or 2 (nearest); got ",
              interpolation);
  TORCH_CHECK(blur_kernel >= 1 && blur_kernel % 2 == 1, "augment_view_cpu: blur_kernel must be odd and >= 1; got ",
              blur_kernel);
  TORCH_CHECK(mean.has_value() == std.has_value(), "augment_view_cpu: give both mean and std, or neither");
  at::Tensor mean_c, std_c;
  if (mean) {
    mean_c = mean->to(at::kFloat).contiguous();
    std_c = std->to(at::kFloat).contiguous();
    TORCH_CHECK(mean_c.numel() == channels && std_c.numel() == channels,
                "augment_view_cpu: mean and std need one value per channel (", channels, ")");
  }
  {  // order indexes factors
    const auto [lo, hi] = std::minmax_element(order.const_data_ptr<int64_t>(),
                                              order.const_data_ptr<int64_t>() + order.numel());
    TORCH_CHECK(*lo >= 0 && *hi <= 3, "augment_view_cpu: order entries must be in [0, 3]");
  }
  const Config cfg{channels,
                   images.size(2),
                   images.size(3),
                   out.size(2),
                   out.size(3),
                   interpolation,
                   zeros_padding,
                   hue,
                   blur_kernel,
                   static_cast<float>(solarize_threshold),
                   static_cast<float>(noise_std),
                   mean ? mean_c.const_data_ptr<float>() : nullptr,
                   mean ? std_c.const_data_ptr<float>() : nullptr};
  const Params prm{theta.const_data_ptr<float>(),
                   flags.const_data_ptr<bool>(),
                   factors.const_data_ptr<float>(),
                   order.const_data_ptr<int64_t>(),
                   sigma.const_data_ptr<float>(),
                   noise ? noise->const_data_ptr<float>() : nullptr,
                   erase_box.const_data_ptr<float>()};
  const bool u8 = images.scalar_type() == at::kByte;
  switch (out.scalar_type()) {
    case at::kFloat:
      u8 ? run<uint8_t, float>(images, prm, cfg, out) : run<float, float>(images, prm, cfg, out);
      break;
    case at::kBFloat16:
      u8 ? run<uint8_t, c10::BFloat16>(images, prm, cfg, out) : run<float, c10::BFloat16>(images, prm, cfg, out);
      break;
    case at::kHalf:
      u8 ? run<uint8_t, c10::Half>(images, prm, cfg, out) : run<float, c10::Half>(images, prm, cfg, out);
      break;
    default:
      TORCH_CHECK(false, "augment_view_cpu: out must be float32, bfloat16 or float16; got ", out.scalar_type());
  }
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(simclr_fast, m) {
  m.def(
      "augment_view_cpu(Tensor images, Tensor theta, Tensor flags, Tensor factors, Tensor order, "
      "Tensor sigma, Tensor? noise, Tensor erase_box, Tensor? mean, Tensor? std, Tensor(a!) out, "
      "int interpolation, bool zeros_padding, int blur_kernel, bool hue, float solarize_threshold, "
      "float noise_std) -> ()");
}

TORCH_LIBRARY_IMPL(simclr_fast, CPU, m) { m.impl("augment_view_cpu", &augment_view_cpu); }
