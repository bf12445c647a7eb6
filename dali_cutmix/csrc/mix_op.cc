// fn.dali_cutmix.mix: CutMix (and MixUp) fused with normalisation, one DALI CPU operator; its boxes
// may also hold the partner's whole image resampled into them (ResizeMix, paste "resize") or sit on
// the partner's saliency peak (SaliencyMix, centre "saliency": Mix::Peak, dali_cutmix.saliency's map).
//
// Why one operator: on a CPU every DALI operator costs a fixed ~0.05-0.1 ms per batch whatever it
// computes, and a paste done as its own pass reads and writes the whole batch once more. Here the
// parameters are drawn inside the operator (from a per-batch DALI draw, so the pipeline's seed
// governs them and DALI's checkpoints capture them: the operator itself holds no state), and the
// pixels are written once, straight from the own image or the partner's, through a per-channel
// lookup table that does what crop_mirror_normalize does: (x - mean) * (1 / std), flip, layout.
//
// With `size`, the images come in any shape (a decoder's random crops) and each is resized to
// size first, bilinearly as fn.resize(interp_type=INTERP_LINEAR, antialias=False) does (rounded to
// uint8 as its output is): the rows each output row needs are resampled on the way, so the resized
// batch is never written out. DALI's CPU resize costs ~3/4 of a prepared-data pipeline's time
// (docs/BENCHMARKS.md); this pass does the same work for a fraction of it. A pixel's three channels
// travel as one four-float vector (GCC's and Clang's vector extension, with SSE2's byte widening
// where the compiler would scalarise it), and a flip is folded into the column taps. Each output
// pixel is resampled once, from the image it shows, so CutMix costs its draws and nothing more.
//
// Compilers: GCC 11 and later (Shuffle stands in for __builtin_shufflevector, GCC 12's). On x86-64
// the training pipelines' path is compiled for the baseline, AVX2 and AVX-512 in one library, and
// the operator takes a copy the CPU runs (Mix::ChooseWrite). docs/DESIGN.md tells why.
//
// The box formula is the one of dali_cutmix.sampling.cutmix_box / minmax_box, in float32 operation for
// operation (compiled with -ffp-contract=off), so NumPy given the same draws gets the same boxes.

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <utility>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "dali/pipeline/operator/checkpointing/stateless_operator.h"
#include "dali/pipeline/operator/operator.h"

namespace dali_cutmix {

// GCC on x86-64 compiles the training pipelines' pixel work three times (portable, AVX2, AVX-512;
// Mix::ChooseWrite); elsewhere (aarch64, Clang) there is the portable copy only.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define DALI_CUTMIX_X86_COPIES 1
#else
#define DALI_CUTMIX_X86_COPIES 0
#endif
// Whether "auto" takes the AVX-512 copy on a CPU that has it: no, it measured no faster than AVX2
// (docs/BENCHMARKS.md), and wide vectors lower some Intel CPUs' clocks for the other threads.
constexpr bool kAutoAvx512 = false;
// SaliencyMix's map: dali_cutmix.saliency's GRID, SCALES, FLOAT_STEPS and FLOAT_LIMIT
// (tests/test_saliencymix.py checks that they agree).
constexpr int64_t kGrid = 32;
constexpr int kScales[] = {7, 15};
constexpr int64_t kFloatSteps = 256;
constexpr float kFloatLimit = 65536.0f;
// The pixel work is inlined into each compiled copy, so that each copy compiles it for its own
// instruction set (a call out of a copy would run the portable code).
#define HOT __attribute__((always_inline)) inline

using ::dali::CPUBackend;
using ::dali::DALIDataType;
using ::dali::OutputDesc;
using ::dali::TensorLayout;
using ::dali::TensorListShape;
using ::dali::TensorShape;
using ::dali::Workspace;

// Everything random about one receiving sample, as in dali_cutmix.sampling.CutMixParams.
struct SampleParams {
  int perm = 0;
  int box[4] = {0, 0, 0, 0};  // y1, x1, y2, x2, half-open
  float lam = 1.0f;
  bool blend = false;
  float half[2] = {0, 0};  // SaliencyMix: the box's half-sides, placed around the partner's peak (Mix::Centre)
};

// dali_cutmix.paste.source_index: the source pixel (of `size`) whose centre is nearest output pixel
// i of the span [lo, hi) when the whole image is squeezed into it, in integers.
inline int64_t SourceIndex(int64_t i, int64_t lo, int64_t hi, int64_t size) {
  int64_t span = std::max<int64_t>(hi - lo, 1);
  return std::clamp((2 * (i - lo) + 1) * size / (2 * span), int64_t{0}, size - 1);
}

// The random numbers behind one unit (the batch, or a sample in mode "elem"): the fields of
// dali_cutmix.sampling.mix_from_draws. u: box placement (2 values; 4 with minmax: sides, then corner).
struct Draws {
  float mix = 1.0f, cut = 1.0f, lam_cut = 1.0f, lam_mix = 1.0f;
  float u[4] = {0, 0, 0, 0};
};

// Bilinear taps along one axis: output k reads inputs i0[k], i1[k] with weight w[k] on i1, the
// pixel centres aligned ((k + 0.5) * in / out - 0.5), the border repeated: DALI's linear filter.
// mirror: output k takes the taps of out - 1 - k (a horizontal flip folded into the resampling).
struct Taps {
  std::vector<int> i0, i1;
  std::vector<float> w;

  // ResizeMix (paste "resize"): with box (y1, x1, y2, x2), outputs [lo, hi) of this axis (before the
  // flip) take the taps of the output pixel SourceIndex names: the whole image, resized, squeezed into
  // the box by nearest neighbour, as dali_cutmix.paste.resampled_into_boxes reads the resized image.
  void Into(int lo, int hi, bool mirror) {
    if (hi <= lo) return;
    Taps full = *this;  // set unmirrored
    const int out = static_cast<int>(w.size());
    for (int k = 0; k < out; k++) {
      int j = mirror ? out - 1 - k : k;
      if (j < lo || j >= hi) continue;
      int s = static_cast<int>(SourceIndex(j, lo, hi, out));
      i0[k] = full.i0[s], i1[k] = full.i1[s], w[k] = full.w[s];
    }
  }

  void Set(int out, int in, bool mirror = false) {
    i0.resize(out), i1.resize(out), w.resize(out);
    float scale = static_cast<float>(in) / static_cast<float>(out);
    for (int k = 0; k < out; k++) {
      int j = mirror ? out - 1 - k : k;
      float s = (static_cast<float>(j) + 0.5f) * scale - 0.5f;
      int i = static_cast<int>(std::floor(s));
      w[k] = s - static_cast<float>(i);
      i0[k] = std::clamp(i, 0, in - 1), i1[k] = std::clamp(i + 1, 0, in - 1);
    }
  }
};

// Four float lanes (GCC's and Clang's vector extension: SSE2, NEON, or plain code where neither).
typedef float F4 __attribute__((vector_size(16)));
typedef uint8_t U8x4 __attribute__((vector_size(4)));
typedef int32_t I4 __attribute__((vector_size(16)));

// Lanes A, B, C, D of the eight in (a, b): __builtin_shufflevector where the compiler has it (Clang,
// GCC 12 and later), GCC's older __builtin_shuffle otherwise (GCC 11 builds the operator too). Both
// move lanes exactly, so every compiler writes the same bytes.
template <int A, int B, int C, int D>
HOT F4 Shuffle(F4 a, F4 b) {
#if defined(__clang__) || __GNUC__ >= 12
  return __builtin_shufflevector(a, b, A, B, C, D);
#else
  return __builtin_shuffle(a, b, I4{A, B, C, D});
#endif
}

// A uint8 HWC image seen at H x W (flipped when mirror): Row(y, a, b) is output row y, its values
// uint8 levels held as floats (the resized image rounded as fn.resize's uint8 output is), pixel x's
// channel c at [x * Stride() + c], written in columns [a, b) only. Two horizontally resampled source
// rows are kept while consecutive output rows share them.
//
// Every output pixel is resampled once, from the image it comes from: an image gives columns
// [x0, x1) (a partner: its box's), and its source rows are resampled in two parts, inside and outside
// the split [s0, s1) (the own image's split is the partner's box), each part when an output row first
// needs it. So the own image never resamples the columns the partner covers in the box's rows, and
// CutMix costs no resampling beyond what the output takes. Three channels are padded to four floats,
// so that a pixel is one vector: its two taps load as four bytes each.
class Resampled {
 public:
  // into: a ResizeMix partner's box (y1, x1, y2, x2, before the flip), which shows the whole image
  // resized to H x W (Taps::Into); nullptr: the image in place.
  void Reset(const uint8_t *src, int64_t h, int64_t w, int64_t C, int64_t H, int64_t W, bool mirror, int64_t x0,
             int64_t x1, int64_t s0 = 0, int64_t s1 = 0, const int *into = nullptr) {
    src_ = src, w_ = w, C_ = C, W_ = W, x0_ = x0, x1_ = x1, stride_ = C == 3 ? 4 : C;
    s0_ = std::clamp(s0, x0, x1), s1_ = std::clamp(s1, s0_, x1);
    cols_.Set(static_cast<int>(W), static_cast<int>(w), mirror && into == nullptr);
    rows_.Set(static_cast<int>(H), static_cast<int>(h));
    if (into != nullptr) {
      rows_.Into(into[0], into[2], false);
      cols_.Into(into[1], into[3], mirror);
    }
    for (auto &slot : slots_) slot.row = -1, slot.values.resize(W * stride_);
    out_.resize(W * stride_);
  }

  int64_t Stride() const { return stride_; }

  // Output row y's columns [x0, x1) (within the image's), rounded to uint8 levels, in a buffer of the
  // whole row: calls for other columns of the same row fill the same buffer.
  HOT const float *Row(int64_t y, int64_t x0, int64_t x1) {
    if (x1 <= x0) return out_.data();
    const float *__restrict a = Horizontal(rows_.i0[y], rows_.i1[y], x0, x1);
    const float *__restrict b = Horizontal(rows_.i1[y], rows_.i0[y], x0, x1);
    float *__restrict out = out_.data();
    const float wy = rows_.w[y];
    for (int64_t k = x0 * stride_, end = x1 * stride_; k < end; k++) {
      // In [0, 255.5): a blend of uint8 values; + 0.5 and truncation round it as uint8_t would.
      out[k] = static_cast<float>(static_cast<int>(a[k] + (b[k] - a[k]) * wy + 0.5f));
    }
    return out_.data();
  }

  // Columns [x0, x1) of output row y (three channels) normalised, (level - mean[c]) * inv_std[c], into
  // three planes' rows: Row then Mix::Put's float operations in one pass, four pixels at a time,
  // their RGBx vectors transposed to R, G and B runs.
  HOT void RowToPlanes(int64_t y, int64_t x0, int64_t x1, float *const planes[3], const float mean[3],
                   const float inv_std[3]) {
    if (x1 <= x0) return;
    const float *a = Horizontal(rows_.i0[y], rows_.i1[y], x0, x1);
    const float *b = Horizontal(rows_.i1[y], rows_.i0[y], x0, x1);
    const float wy = rows_.w[y];
    auto level = [&](int64_t x) __attribute__((always_inline)) {  // as Row: a blend of uint8 values, rounded as uint8_t would be
      F4 u, v;
      std::memcpy(&u, a + x * 4, sizeof(u));
      std::memcpy(&v, b + x * 4, sizeof(v));
      return __builtin_convertvector(__builtin_convertvector(u + (v - u) * wy + 0.5f, I4), F4);
    };
    float *__restrict r = planes[0], *__restrict g = planes[1], *__restrict bl = planes[2];
    auto four = [&](int64_t x) __attribute__((always_inline)) {  // pixels x .. x + 3
      F4 p0 = level(x), p1 = level(x + 1), p2 = level(x + 2), p3 = level(x + 3);
      F4 rg01 = Shuffle<0, 4, 1, 5>(p0, p1), rg23 = Shuffle<0, 4, 1, 5>(p2, p3);
      F4 b01 = Shuffle<2, 6, 3, 7>(p0, p1), b23 = Shuffle<2, 6, 3, 7>(p2, p3);
      F4 R = (Shuffle<0, 1, 4, 5>(rg01, rg23) - mean[0]) * inv_std[0];
      F4 G = (Shuffle<2, 3, 6, 7>(rg01, rg23) - mean[1]) * inv_std[1];
      F4 B = (Shuffle<0, 1, 4, 5>(b01, b23) - mean[2]) * inv_std[2];
      std::memcpy(r + x, &R, sizeof(R));
      std::memcpy(g + x, &G, sizeof(G));
      std::memcpy(bl + x, &B, sizeof(B));
    };
    int64_t x = x0;
    for (; x + 4 <= x1; x += 4) four(x);
    if (x < x1 && x1 - x0 >= 4) {  // the last pixels as the group ending at x1: some written twice, alike
      four(x1 - 4);
      return;
    }
    for (; x < x1; x++) {
      F4 v = level(x);
      r[x] = (v[0] - mean[0]) * inv_std[0], g[x] = (v[1] - mean[1]) * inv_std[1], bl[x] = (v[2] - mean[2]) * inv_std[2];
    }
  }

 private:
  struct Slot {
    int row = -1;
    bool inside = false, outside = false;  // which parts of the row are resampled
    std::vector<float> values;
  };

  // Source row r resampled at least in the parts that columns [x0, x1) touch, in the slot that does
  // not hold `keep`.
  HOT const float *Horizontal(int r, int keep, int64_t x0, int64_t x1) {
    Slot *slot = nullptr;
    for (auto &s : slots_)
      if (s.row == r) slot = &s;
    if (slot == nullptr) {
      slot = slots_[0].row == keep ? &slots_[1] : &slots_[0];
      slot->row = r, slot->inside = slot->outside = false;
    }
    const uint8_t *in = src_ + static_cast<int64_t>(r) * w_ * C_;
    if (!slot->inside && x0 < s1_ && x1 > s0_) {
      Resample(in, slot->values.data(), s0_, s1_);
      slot->inside = true;
    }
    if (!slot->outside && (x0 < s0_ || x1 > s1_)) {
      Resample(in, slot->values.data(), x0_, s0_);
      Resample(in, slot->values.data(), s1_, x1_);
      slot->outside = true;
    }
    return slot->values.data();
  }

  HOT void Resample(const uint8_t *in, float *out, int64_t c0, int64_t c1) const {
    if (c1 <= c0) return;
    C_ == 3 ? HorizontalRGB(in, out, c0, c1) : Horizontal(in, out, c0, c1);
  }

  // Pixel p's RGB as floats (and the byte after it, readable when four_bytes, in the fourth lane).
  HOT static F4 Pixel(const uint8_t *p, bool four_bytes) {
    if (!four_bytes) return F4{static_cast<float>(p[0]), static_cast<float>(p[1]), static_cast<float>(p[2]), 0.0f};
    int32_t bytes;
    std::memcpy(&bytes, p, 4);
#if defined(__SSE2__)  // the compiler scalarises a vector conversion from bytes under SSE2: widen by hand
    const __m128i zero = _mm_setzero_si128();
    __m128i v = _mm_unpacklo_epi16(_mm_unpacklo_epi8(_mm_cvtsi32_si128(bytes), zero), zero);
    return reinterpret_cast<F4>(_mm_cvtepi32_ps(v));
#else
    U8x4 v;
    std::memcpy(&v, &bytes, 4);
    return __builtin_convertvector(v, F4);
#endif
  }

  // Columns [c0, c1) of a source row, horizontally resampled.
  HOT void HorizontalRGB(const uint8_t *in, float *out, int64_t c0, int64_t c1) const {
    const int *__restrict i0 = cols_.i0.data(), *__restrict i1 = cols_.i1.data();
    const float *__restrict w = cols_.w.data();
    const int last = static_cast<int>(w_) - 1;  // a pixel before it has a fourth byte in the row
    for (int64_t x = c0; x < c1; x++) {
      F4 u = Pixel(in + i0[x] * 3, i0[x] < last), v = Pixel(in + i1[x] * 3, i1[x] < last);
      F4 r = u + (v - u) * w[x];
      std::memcpy(out + x * 4, &r, sizeof(r));
    }
  }

  HOT void Horizontal(const uint8_t *__restrict in, float *__restrict out, int64_t c0, int64_t c1) const {
    const int64_t C = C_;
    const int *__restrict i0 = cols_.i0.data(), *__restrict i1 = cols_.i1.data();
    const float *__restrict w = cols_.w.data();
    for (int64_t x = c0; x < c1; x++) {
      const uint8_t *p0 = in + i0[x] * C, *p1 = in + i1[x] * C;
      for (int64_t c = 0; c < C; c++) {
        float u = p0[c], v = p1[c];
        out[x * C + c] = u + (v - u) * w[x];
      }
    }
  }

  const uint8_t *src_ = nullptr;
  int64_t w_ = 0, C_ = 0, W_ = 0, x0_ = 0, x1_ = 0, s0_ = 0, s1_ = 0, stride_ = 0;
  Taps cols_, rows_;
  Slot slots_[2];
  std::vector<float> out_;
};

class Mix : public ::dali::StatelessOperator<CPUBackend> {
 public:
  explicit Mix(const ::dali::OpSpec &spec)
      : ::dali::StatelessOperator<CPUBackend>(spec),
        alpha_(spec.GetArgument<float>("alpha")),
        mixup_alpha_(spec.GetArgument<float>("mixup_alpha")),
        prob_(spec.GetArgument<float>("prob")),
        switch_prob_(spec.GetArgument<float>("switch_prob")),

        no_self_(spec.GetArgument<bool>("no_self")),
        minmax_(spec.GetRepeatedArgument<float>("minmax")),
        resize_scale_(spec.GetRepeatedArgument<float>("resize_scale")),
        normalize_(spec.HasArgument("mean") || spec.HasArgument("std")),
        output_layout_(spec.GetArgument<std::string>("output_layout")),
        resize_(spec.HasArgument("size") || spec.HasTensorArgument("size")),
        copies_(ChooseWrite(spec.GetArgument<std::string>("isa"))) {
    auto mode = spec.GetArgument<std::string>("mode");
    DALI_ENFORCE(mode == "batch" || mode == "elem", "mode must be \"batch\" or \"elem\", got \"" + mode + "\"");
    per_sample_ = mode == "elem";
    DALI_ENFORCE(alpha_ >= 0 && mixup_alpha_ >= 0, "alpha and mixup_alpha must be >= 0");
    DALI_ENFORCE(prob_ >= 0 && prob_ <= 1 && switch_prob_ >= 0 && switch_prob_ <= 1,
                 "prob and switch_prob must be in [0, 1]");
    DALI_ENFORCE(minmax_.empty() || (minmax_.size() == 2 && 0 < minmax_[0] && minmax_[0] < minmax_[1] &&
                                     minmax_[1] <= 1),
                 "minmax must be empty or (min, max) with 0 < min < max <= 1");
    auto paste = spec.GetArgument<std::string>("paste"), centre = spec.GetArgument<std::string>("centre");
    DALI_ENFORCE(paste == "cut" || paste == "resize", "paste must be \"cut\" or \"resize\", got \"" + paste + "\"");
    DALI_ENFORCE(centre == "random" || centre == "saliency",
                 "centre must be \"random\" or \"saliency\", got \"" + centre + "\"");
    resized_paste_ = paste == "resize", salient_ = centre == "saliency";
    DALI_ENFORCE(resize_scale_.size() == 2 && 0 < resize_scale_[0] && resize_scale_[0] < resize_scale_[1] &&
                     resize_scale_[1] <= 1,
                 "resize_scale must be (min, max) with 0 < min < max <= 1");
    DALI_ENFORCE(!resized_paste_ || minmax_.empty(), "paste \"resize\" takes its box's scale from resize_scale, not minmax");
    DALI_ENFORCE(!salient_ || (alpha_ > 0 && minmax_.empty() && !resized_paste_),
                 "centre \"saliency\" centres CutMix's alpha box: it needs alpha > 0, no minmax and paste \"cut\"");
    cutmix_ = alpha_ > 0 || !minmax_.empty() || resized_paste_;
    mixup_ = mixup_alpha_ > 0;
    DALI_ENFORCE(cutmix_ || mixup_, "nothing to mix: alpha and mixup_alpha are both 0 and minmax is not set");
    DALI_ENFORCE(output_layout_ == "HWC" || output_layout_ == "CHW",
                 "output_layout must be \"HWC\" or \"CHW\", got \"" + output_layout_ + "\"");
    dtype_ = spec.HasArgument("dtype") ? spec.GetArgument<DALIDataType>("dtype")
                                       : (normalize_ ? DALIDataType::DALI_FLOAT : DALIDataType::DALI_UINT8);
    DALI_ENFORCE(dtype_ == DALIDataType::DALI_FLOAT || (dtype_ == DALIDataType::DALI_UINT8 && !normalize_),
                 "dtype must be FLOAT, or UINT8 without mean/std");
    mean_ = spec.HasArgument("mean") ? spec.GetRepeatedArgument<float>("mean") : std::vector<float>{0.0f};
    std_ = spec.HasArgument("std") ? spec.GetRepeatedArgument<float>("std") : std::vector<float>{1.0f};
    for (float s : std_) DALI_ENFORCE(s != 0, "std must not contain 0");
  }

 protected:
  bool SetupImpl(std::vector<OutputDesc> &out, const Workspace &ws) override {
    const auto &images = ws.Input<CPUBackend>(0);
    const auto &labels = ws.Input<CPUBackend>(1);
    int n = images.num_samples();
    DALI_ENFORCE(images.type() == DALIDataType::DALI_UINT8 || images.type() == DALIDataType::DALI_FLOAT,
                 ::dali::make_string("dali_cutmix.mix takes uint8 or float32 images, got ", images.type()));
    DALI_ENFORCE(images.type() == DALIDataType::DALI_UINT8 || dtype_ == DALIDataType::DALI_FLOAT ||
                     !spec_.HasArgument("dtype"),
                 "float32 images give float32 output (dtype=FLOAT)");
    DALI_ENFORCE(images.sample_dim() == 3, "dali_cutmix.mix takes HWC images (3 dimensions)");
    bool float_out = dtype_ == DALIDataType::DALI_FLOAT || images.type() == DALIDataType::DALI_FLOAT;
    float_in_ = images.type() == DALIDataType::DALI_FLOAT;
    if (n == 0) {  // an empty batch: empty outputs of the types and ranks a full one has
      out.resize(6);
      out[0] = {TensorListShape<>(0, 3), float_out ? DALIDataType::DALI_FLOAT : dtype_};
      out[1] = {TensorListShape<>(0, labels.sample_dim()), labels.type()};
      out[2] = {TensorListShape<>(0, 0), DALIDataType::DALI_FLOAT};
      out[3] = {TensorListShape<>(0, 0), DALIDataType::DALI_INT32};
      out[4] = {TensorListShape<>(0, 1), DALIDataType::DALI_INT32};
      out[5] = {TensorListShape<>(0, 0), DALIDataType::DALI_FLOAT};
      return true;
    }
    auto shape = images.tensor_shape(0);
    if (resize_) {
      DALI_ENFORCE(images.type() == DALIDataType::DALI_UINT8, "size (the fused resize) takes uint8 images");
      auto target = TargetSize(ws, 0);
      for (int i = 0; i < n; i++) {
        DALI_ENFORCE(TargetSize(ws, i) == target,
                     ::dali::make_string("size must be one (H, W) for the whole batch: sample 0 has ", target[0], "x",
                                         target[1], ", sample ", i, " has ", TargetSize(ws, i)[0], "x",
                                         TargetSize(ws, i)[1]));
        auto s = images.tensor_shape(i);
        DALI_ENFORCE(s[0] >= 1 && s[1] >= 1 && s[2] == shape[2],
                     ::dali::make_string("images to resize need one channel count and at least 1x1 pixels: sample 0 is ",
                                         shape, ", sample ", i, " is ", s));
      }
      H_ = target[0], W_ = target[1], C_ = shape[2];
    } else {
      for (int i = 1; i < n; i++) {
        DALI_ENFORCE(images.tensor_shape(i) == shape,
                     ::dali::make_string("CutMix needs a batch of one image shape (crop or resize first, or give size): "
                                         "sample 0 is ", images.tensor_shape(0), ", sample ", i, " is ",
                                         images.tensor_shape(i)));
      }
      H_ = shape[0], W_ = shape[1], C_ = shape[2];
      auto expect = spec_.GetRepeatedArgument<int>("expect_size");
      DALI_ENFORCE(expect.empty() || (expect.size() == 2 && expect[0] == H_ && expect[1] == W_),
                   ::dali::make_string("cutmix(size=(", expect.empty() ? 0 : expect[0], ", ",
                                       expect.size() < 2 ? 0 : expect[1], ")) got images of ", H_, "x", W_,
                                       " (HWC); resize or crop to that size first, or leave size out"));
    }
    DALI_ENFORCE(H_ >= 2 && W_ >= 2,
                 ::dali::make_string("images must be at least 2x2 (HxW) for CutMix, got ", H_, "x", W_));
    for (auto *v : {&mean_, &std_}) {
      DALI_ENFORCE(v->size() == 1 || static_cast<int64_t>(v->size()) == C_,
                   ::dali::make_string("mean and std need 1 or ", C_, " values (one per channel)"));
    }
    const auto &entropy = ws.Input<CPUBackend>(2);
    DALI_ENFORCE(entropy.type() == DALIDataType::DALI_FLOAT && entropy.num_samples() == n &&
                     entropy.tensor_shape(0).num_elements() >= 2,
                 "entropy must be float32 with at least 2 values per sample (fn.random.uniform(shape=[2]))");
    probs_.assign(n, prob_);
    if (ws.NumInput() > 3) {
      const auto &prob = ws.Input<CPUBackend>(3);
      DALI_ENFORCE(prob.type() == DALIDataType::DALI_FLOAT && prob.num_samples() == n,
                   ::dali::make_string("prob must be a float32 scalar per sample, got ", prob.type()));
      for (int i = 0; i < n; i++) {
        DALI_ENFORCE(prob.tensor_shape(i).num_elements() == 1,
                     ::dali::make_string("prob must be a float32 scalar per sample, sample ", i, " has shape ",
                                         prob.tensor_shape(i)));
        float p = prob.tensor<float>(i)[0];
        DALI_ENFORCE(p >= 0 && p <= 1, ::dali::make_string("prob[", i, "] = ", p, " is not in [0, 1]"));
        probs_[i] = p;
      }
    }
    Sample(n, entropy.tensor<float>(0));

    TensorListShape<> label_shape(n, labels.sample_dim());
    for (int i = 0; i < n; i++) label_shape.set_tensor_shape(i, labels.tensor_shape(params_[i].perm));
    TensorShape<> image_shape = output_layout_ == "CHW" ? TensorShape<>{C_, H_, W_} : TensorShape<>{H_, W_, C_};
    out.resize(6);
    out[0] = {::dali::uniform_list_shape(n, image_shape), float_out ? DALIDataType::DALI_FLOAT : dtype_};
    out[1] = {label_shape, labels.type()};
    out[2] = {::dali::uniform_list_shape(n, TensorShape<>{}), DALIDataType::DALI_FLOAT};  // lam
    out[3] = {::dali::uniform_list_shape(n, TensorShape<>{}), DALIDataType::DALI_INT32};  // perm
    out[4] = {::dali::uniform_list_shape(n, TensorShape<>{4}), DALIDataType::DALI_INT32};  // boxes
    out[5] = {::dali::uniform_list_shape(n, TensorShape<>{}), DALIDataType::DALI_FLOAT};  // blend
    return true;
  }

  void RunImpl(Workspace &ws) override {
    const auto &images = ws.Input<CPUBackend>(0);
    const auto &labels = ws.Input<CPUBackend>(1);
    auto &out = ws.Output<CPUBackend>(0);
    auto &labels_b = ws.Output<CPUBackend>(1);
    int n = images.num_samples();
    out.SetLayout(TensorLayout(output_layout_));
    if (n == 0) return;
    auto &tp = ws.GetThreadPool();
    if (salient_) {  // SaliencyMix: each image's peak, then each box around its partner's
      peaks_.resize(n);
      for (int i = 0; i < n; i++) tp.AddWork([&, i](int) { peaks_[i] = Peak(images, i); }, H_ * W_);
      tp.RunAll();
      for (auto &p : params_) Centre(p, peaks_[p.perm]);
    }
    size_t label_bytes = labels.type_info().size();
    for (int i = 0; i < n; i++) {
      const auto &p = params_[i];
      std::memcpy(labels_b.raw_mutable_tensor(i), labels.raw_tensor(p.perm),
                  labels.tensor_shape(p.perm).num_elements() * label_bytes);
      ws.Output<CPUBackend>(2).mutable_tensor<float>(i)[0] = p.lam;
      ws.Output<CPUBackend>(3).mutable_tensor<int>(i)[0] = p.perm;
      std::copy(p.box, p.box + 4, ws.Output<CPUBackend>(4).mutable_tensor<int>(i));
      ws.Output<CPUBackend>(5).mutable_tensor<float>(i)[0] = p.blend ? 1.0f : 0.0f;
    }
    BuildTables();
    for (int i = 0; i < n; i++) {
      bool mirror = spec_.GetArgument<int>("mirror", &ws, i) != 0;
      tp.AddWork([&, i, mirror](int) { WriteSample(out, images, i, params_[i], mirror); }, H_ * W_);
    }
    tp.RunAll();
  }

 private:
  // The output (H, W) of sample i when resizing: the size argument, fixed or fed per sample.
  std::array<int64_t, 2> TargetSize(const Workspace &ws, int i) const {
    std::vector<int> size;
    if (spec_.HasTensorArgument("size")) {
      const auto &t = ws.ArgumentInput("size");
      DALI_ENFORCE(t.num_samples() == ws.Input<CPUBackend>(0).num_samples(),
                   ::dali::make_string("size has ", t.num_samples(), " samples, the images ",
                                       ws.Input<CPUBackend>(0).num_samples()));
      DALI_ENFORCE(t.type() == DALIDataType::DALI_INT32 && t.tensor_shape(i).num_elements() == 2,
                   ::dali::make_string("size must be int32 (H, W) per sample, got ", t.type(), " of shape ",
                                       t.tensor_shape(i)));
      size.assign(t.tensor<int>(i), t.tensor<int>(i) + 2);
    } else {
      size = spec_.GetRepeatedArgument<int>("size");
      DALI_ENFORCE(size.size() == 2, "size must be (H, W)");
    }
    DALI_ENFORCE(size[0] >= 2 && size[1] >= 2,
                 ::dali::make_string("size must be at least 2x2 for CutMix, got ", size[0], "x", size[1]));
    return {size[0], size[1]};
  }

  // Per channel: mean and 1/std rounded to float once, as crop_mirror_normalize does, and for uint8
  // input a lookup table of (x - mean) * (1 / std) for each of the 256 values: one load per value.
  void BuildTables() {
    if (static_cast<int64_t>(table_.size()) == C_ * 256) return;
    table_.resize(C_ * 256);
    mean_c_.resize(C_);
    inv_std_c_.resize(C_);
    for (int c = 0; c < C_; c++) {
      mean_c_[c] = mean_[c % mean_.size()];
      inv_std_c_[c] = static_cast<float>(1.0 / static_cast<double>(std_[c % std_.size()]));
      for (int v = 0; v < 256; v++) table_[c * 256 + v] = Convert(static_cast<float>(v), c);
    }
  }

  float Convert(float v, int64_t c) const { return normalize_ ? (v - mean_c_[c]) * inv_std_c_[c] : v; }

  // blend_images: w * own + (1 - w) * partner in float32; uint8 rounded half away from zero and clipped.
  static uint8_t Blend(uint8_t own, uint8_t partner, float w, float w_partner) {
    float a = static_cast<float>(own) * w;
    float b = static_cast<float>(partner) * w_partner;
    float v = std::floor((a + b) + 0.5f);
    return static_cast<uint8_t>(std::min(std::max(v, 0.0f), 255.0f));
  }

  static float Blend(float own, float partner, float w, float w_partner) { return own * w + partner * w_partner; }

  // Sample i of the output, whatever the input and output types: one thread pool task.
  void WriteSample(::dali::TensorList<CPUBackend> &out, const ::dali::TensorList<CPUBackend> &images, int i,
                   const SampleParams &p, bool mirror) const {
    if (resize_) {
      auto a = images.tensor_shape(i), b = images.tensor_shape(p.perm);
      const uint8_t *own = images.tensor<uint8_t>(i), *partner = images.tensor<uint8_t>(p.perm);
      if (dtype_ == DALIDataType::DALI_FLOAT) {
        WriteResized(out.mutable_tensor<float>(i), own, a[0], a[1], partner, b[0], b[1], p, mirror);
      } else {
        WriteResized(out.mutable_tensor<uint8_t>(i), own, a[0], a[1], partner, b[0], b[1], p, mirror);
      }
    } else if (float_in_) {
      Write(out.mutable_tensor<float>(i), images.tensor<float>(i), images.tensor<float>(p.perm), p, mirror);
    } else if (dtype_ == DALIDataType::DALI_FLOAT) {
      Write(out.mutable_tensor<float>(i), images.tensor<uint8_t>(i), images.tensor<uint8_t>(p.perm), p, mirror);
    } else {
      Write(out.mutable_tensor<uint8_t>(i), images.tensor<uint8_t>(i), images.tensor<uint8_t>(p.perm), p, mirror);
    }
  }

  // The training pipelines' case (resize, float CHW output, three channels, CutMix or no mix): the
  // own image outside the partner's columns [bx1, bx2) in the box's rows, resampled, normalised and
  // written straight to the three planes, every output pixel once.
  HOT void Planes(Resampled &own, Resampled &partner, float *out, const SampleParams &p, int64_t bx1,
                  int64_t bx2) const {
    const int64_t H = H_, W = W_;
    const float *mean = mean_c_.data(), *inv_std = inv_std_c_.data();  // 0 and 1 without mean/std
    for (int64_t y = 0; y < H; y++) {
      float *planes[3] = {out + y * W, out + (H + y) * W, out + (2 * H + y) * W};
      int64_t x1 = 0, x2 = 0;  // the partner's columns in this row
      if (y >= p.box[0] && y < p.box[2]) x1 = bx1, x2 = bx2;
      own.RowToPlanes(y, 0, x1, planes, mean, inv_std);
      partner.RowToPlanes(y, x1, x2, planes, mean, inv_std);
      own.RowToPlanes(y, x2, W, planes, mean, inv_std);
    }
  }

  // Planes compiled once per instruction set, the pixel work inlined into each (HOT), so that one
  // library runs on every x86-64 CPU and uses AVX2 or AVX-512 where the CPU has them (chosen when the
  // operator is made: ChooseWrite). No -ffast-math and no FMA contraction in any copy
  // (-ffp-contract=off), so every copy writes the same bytes (tests/test_ops.py compares them). Only
  // this path is copied: it is the training pipelines' and most of their time; the others (MixUp
  // blends, HWC or uint8 output, no resize) run the portable code.
  using WriteFn = void (Mix::*)(Resampled &, Resampled &, float *, const SampleParams &, int64_t, int64_t) const;

  void PlanesPortable(Resampled &own, Resampled &partner, float *out, const SampleParams &p, int64_t bx1,
                      int64_t bx2) const {
    Planes(own, partner, out, p, bx1, bx2);
  }

  // SaliencyMix's pass over a resized image (Peak): output rows [y0, y1), columns [0, width), their
  // levels added lane by lane into acc (whole numbers below 2**24: exact in float32, in any copy).
  using SumFn = void (*)(Resampled &, int64_t, int64_t, int64_t, float *);

  HOT static void SumRows(Resampled &image, int64_t y0, int64_t y1, int64_t width, float *acc) {
    const int64_t n = width * image.Stride();
    for (int64_t y = y0; y < y1; y++) {
      const float *__restrict row = image.Row(y, 0, width);
      float *__restrict sum = acc;
      for (int64_t k = 0; k < n; k++) sum[k] += row[k];
    }
  }

  static void SumRowsPortable(Resampled &image, int64_t y0, int64_t y1, int64_t width, float *acc) {
    SumRows(image, y0, y1, width, acc);
  }

#if DALI_CUTMIX_X86_COPIES
  __attribute__((target("avx2"))) void PlanesAvx2(Resampled &own, Resampled &partner, float *out,
                                                  const SampleParams &p, int64_t bx1, int64_t bx2) const {
    Planes(own, partner, out, p, bx1, bx2);
  }

  __attribute__((target("avx2"))) static void SumRowsAvx2(Resampled &image, int64_t y0, int64_t y1, int64_t width,
                                                          float *acc) {
    SumRows(image, y0, y1, width, acc);
  }

  __attribute__((target("avx512f,avx512bw,avx512vl,avx2"))) static void SumRowsAvx512(Resampled &image, int64_t y0,
                                                                                      int64_t y1, int64_t width,
                                                                                      float *acc) {
    SumRows(image, y0, y1, width, acc);
  }

  __attribute__((target("avx512f,avx512bw,avx512vl,avx2"))) void PlanesAvx512(Resampled &own, Resampled &partner,
                                                                             float *out, const SampleParams &p,
                                                                             int64_t bx1, int64_t bx2) const {
    Planes(own, partner, out, p, bx1, bx2);
  }
#endif

  // isa: "auto" (AVX2 where the CPU has it, else portable), or one copy by name, for measuring and
  // testing them.
  static std::pair<WriteFn, SumFn> ChooseWrite(const std::string &isa) {
    DALI_ENFORCE(isa == "auto" || isa == "portable" || isa == "avx2" || isa == "avx512",
                 "isa must be \"auto\", \"portable\", \"avx2\" or \"avx512\", got \"" + isa + "\"");
#if DALI_CUTMIX_X86_COPIES
    __builtin_cpu_init();
    bool avx2 = __builtin_cpu_supports("avx2");
    bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                  __builtin_cpu_supports("avx512vl");
    DALI_ENFORCE(isa != "avx2" || avx2, "isa \"avx2\": this CPU has no AVX2");
    DALI_ENFORCE(isa != "avx512" || avx512, "isa \"avx512\": this CPU has no AVX-512 (F, BW and VL)");
    if (isa == "avx512" || (isa == "auto" && avx512 && kAutoAvx512)) return {&Mix::PlanesAvx512, &SumRowsAvx512};
    if (isa == "avx2" || (isa == "auto" && avx2)) return {&Mix::PlanesAvx2, &SumRowsAvx2};
#else
    DALI_ENFORCE(isa == "auto" || isa == "portable",
                 "isa \"" + isa + "\": this build has only the portable copy (not GCC on x86-64)");
#endif
    return {&Mix::PlanesPortable, &SumRowsPortable};
  }

  // Sample i resized to H_ x W_ (own and partner) and written as Write does, a row at a time.
  // The flip is folded into the column taps, so the box's columns are mirrored here instead of the
  // pixels at the write.
  template <typename Out>
  void WriteResized(Out *out, const uint8_t *own_image, int64_t own_h, int64_t own_w, const uint8_t *partner_image,
                    int64_t partner_h, int64_t partner_w, const SampleParams &p, bool mirror) const {
    const int64_t H = H_, W = W_, C = C_;
    const bool chw = output_layout_ == "CHW";
    const int64_t bx1 = mirror ? W - p.box[3] : p.box[1], bx2 = mirror ? W - p.box[1] : p.box[3];
    thread_local Resampled own, partner;
    thread_local std::vector<float> mixed;
    const bool box = !p.blend && p.box[2] > p.box[0] && bx2 > bx1;  // the partner gives a box, not every pixel
    // The own image resamples its rows in two parts, split at the box's columns (see Resampled).
    own.Reset(own_image, own_h, own_w, C, H, W, mirror, 0, W, box ? bx1 : 0, box ? bx2 : 0);
    partner.Reset(partner_image, partner_h, partner_w, C, H, W, mirror, p.blend ? 0 : bx1, p.blend ? W : bx2, 0, 0,
                  resized_paste_ && box ? p.box : nullptr);
    const int64_t S = own.Stride();
    mixed.resize(p.blend ? W * S : 0);
    if constexpr (std::is_same_v<Out, float>) {
      if (chw && C == 3 && !p.blend) {  // the training pipelines' case: the copy for this CPU
        (this->*copies_.first)(own, partner, out, p, bx1, bx2);
        return;
      }
    }
    for (int64_t y = 0; y < H; y++) {
      int64_t x1 = 0, x2 = 0;  // the partner's columns in this row
      if (y >= p.box[0] && y < p.box[2]) x1 = bx1, x2 = bx2;
      const float *src = p.blend ? own.Row(y, 0, W) : (own.Row(y, 0, x1), own.Row(y, x2, W));
      const float *from_partner = p.blend ? partner.Row(y, 0, W) : x2 > x1 ? partner.Row(y, x1, x2) : nullptr;
      if (p.blend) {
        float w = p.lam, wp = 1.0f - p.lam;
        for (int64_t k = 0; k < W * S; k++) {
          mixed[k] = std::min(std::max(std::floor(src[k] * w + from_partner[k] * wp + 0.5f), 0.0f), 255.0f);
        }
        src = mixed.data();
      }
      for (int64_t c = 0; c < C; c++) {
        Put(out, src + c, S, y, c, 0, x1, chw);
        Put(out, from_partner + c, S, y, c, x1, x2, chw);
        Put(out, src + c, S, y, c, x2, W, chw);
      }
    }
  }

  // Columns [x0, x1) of channel c of output row y from uint8 levels held as floats (column x's at
  // v[x * step]): normalised as the table does (the same float operations) for float output.
  template <typename Out>
  HOT void Put(Out *out, const float *v, int64_t step, int64_t y, int64_t c, int64_t x0, int64_t x1, bool chw) const {
    if (x1 <= x0) return;
    const int64_t H = H_, W = W_, C = C_;
    const float *__restrict in = v;
    Out *__restrict dst = chw ? out + (c * H + y) * W : out + y * W * C + c;
    const int64_t out_step = chw ? 1 : C;
    if constexpr (std::is_same_v<Out, uint8_t>) {
      for (int64_t x = x0; x < x1; x++) dst[x * out_step] = static_cast<uint8_t>(in[x * step]);
    } else {
      const float mean = mean_c_[c], inv_std = inv_std_c_[c];  // 0 and 1 without mean/std (BuildTables)
      if (chw && step == 4) {  // CHW from RGBx levels (MixUp samples): a contiguous write, vectorised
        for (int64_t x = x0; x < x1; x++) dst[x] = (in[x * 4] - mean) * inv_std;
      } else {
        for (int64_t x = x0; x < x1; x++) dst[x * out_step] = (in[x * step] - mean) * inv_std;
      }
    }
  }

  template <typename Out, typename In>
  void Write(Out *out, const In *own, const In *partner, const SampleParams &p, bool mirror) const {
    const int64_t H = H_, W = W_, C = C_;
    const bool chw = output_layout_ == "CHW";
    std::vector<In> row(p.blend ? W * C : 0), into(resized_paste_ ? W * C : 0);
    for (int64_t y = 0; y < H; y++) {
      const In *own_row = own + y * W * C;
      const In *partner_row = partner + y * W * C;
      // Three runs of columns: own, partner (inside the box's rows only), own.
      int64_t x1 = 0, x2 = 0;
      if (y >= p.box[0] && y < p.box[2]) x1 = p.box[1], x2 = p.box[3];
      if (resized_paste_ && !p.blend && x2 > x1) {  // ResizeMix: the whole partner squeezed into the box
        const In *source = partner + SourceIndex(y, p.box[0], p.box[2], H) * W * C;
        for (int64_t x = x1; x < x2; x++)
          std::copy_n(source + SourceIndex(x, x1, x2, W) * C, C, into.data() + x * C);
        partner_row = into.data();
      }
      const In *src = own_row;
      if (p.blend) {
        float w = p.lam, wp = 1.0f - p.lam;
        for (int64_t k = 0; k < W * C; k++) row[k] = Blend(own_row[k], partner_row[k], w, wp);
        src = row.data();
      }
      Copy(out, src, y, 0, x1, mirror, chw);
      Copy(out, partner_row, y, x1, x2, mirror, chw);
      Copy(out, src, y, x2, W, mirror, chw);
    }
  }

  // Columns [x0, x1) of row y from src (an HWC row) to the output.
  template <typename Out, typename In>
  void Copy(Out *out, const In *src, int64_t y, int64_t x0, int64_t x1, bool mirror, bool chw) const {
    const int64_t H = H_, W = W_, C = C_;
    if (x1 <= x0) return;
    if constexpr (std::is_same_v<Out, In>) {
      if (!normalize_ && !chw && !mirror) {
        std::memcpy(out + (y * W + x0) * C, src + x0 * C, (x1 - x0) * C * sizeof(In));
        return;
      }
    }
    auto value = [&](int64_t x, int64_t c) -> Out {
      if constexpr (std::is_same_v<In, uint8_t>) {
        if constexpr (std::is_same_v<Out, uint8_t>) {
          return src[x * C + c];
        } else {
          return table_[c * 256 + src[x * C + c]];
        }
      } else {
        return Convert(src[x * C + c], c);
      }
    };
    if (chw) {
      for (int64_t c = 0; c < C; c++) {
        Out *plane = out + c * H * W + y * W;
        if (mirror) {
          for (int64_t x = x0; x < x1; x++) plane[W - 1 - x] = value(x, c);
        } else {
          for (int64_t x = x0; x < x1; x++) plane[x] = value(x, c);
        }
      }
    } else {
      Out *line = out + y * W * C;
      for (int64_t x = x0; x < x1; x++) {
        int64_t ox = mirror ? W - 1 - x : x;
        for (int64_t c = 0; c < C; c++) line[ox * C + c] = value(x, c);
      }
    }
  }

  // ---- SaliencyMix: dali_cutmix.saliency.peaks, in the same integers ----

  // Image i's saliency peak (y, x): the centre pixel of the first cell of greatest centre-surround
  // contrast on the grid of dali_cutmix.saliency (GRID cells along the shorter side, windows of
  // kScales cells). Its cell sums are of the image the output shows: resized (its uint8 levels, as
  // Resampled rounds them) when the operator resizes; float images in steps of 1/256, clipped.
  std::array<int64_t, 2> Peak(const ::dali::TensorList<CPUBackend> &images, int i) const {
    const int64_t H = H_, W = W_, C = C_, f = std::max<int64_t>(1, std::min(H, W) / kGrid);
    const int64_t rows = H / f, cols = W / f;
    std::vector<int64_t> cells(rows * cols, 0);
    auto add = [&](int64_t y, auto level) {  // row y's levels, channels summed, into its cells
      int64_t *cell = cells.data() + (y / f) * cols;
      for (int64_t x = 0; x < cols * f; x++) {
        int64_t sum = 0;
        for (int64_t c = 0; c < C; c++) sum += level(x, c);
        cell[x / f] += sum;
      }
    };
    if (resize_) {
      auto shape = images.tensor_shape(i);
      Resampled image;
      image.Reset(images.tensor<uint8_t>(i), shape[0], shape[1], C, H, W, false, 0, W);
      // A cell row's f output rows added lane by lane first (whole numbers below 2**24: exact in
      // float32, and a loop the compiler vectorises), then each cell's columns and channels.
      const int64_t S = image.Stride();
      std::vector<float> acc(cols * f * S);
      for (int64_t r = 0; r < rows; r++) {
        std::fill(acc.begin(), acc.end(), 0.0f);
        copies_.second(image, r * f, (r + 1) * f, cols * f, acc.data());
        add(r * f, [&](int64_t x, int64_t c) { return static_cast<int64_t>(acc[x * S + c]); });
      }
    } else if (float_in_) {
      const float *image = images.tensor<float>(i);
      for (int64_t y = 0; y < rows * f; y++) {
        const float *row = image + y * W * C;
        add(y, [&](int64_t x, int64_t c) {
          float v = row[x * C + c] * static_cast<float>(kFloatSteps);  // exact: a power of two
          if (std::isnan(v)) return int64_t{0};
          return static_cast<int64_t>(std::clamp(std::floor(v), -kFloatLimit, kFloatLimit));
        });
      }
    } else {
      const uint8_t *image = images.tensor<uint8_t>(i);
      for (int64_t y = 0; y < rows * f; y++) {
        const uint8_t *row = image + y * W * C;
        add(y, [&](int64_t x, int64_t c) { return static_cast<int64_t>(row[x * C + c]); });
      }
    }
    // [1, 2, 1] down the rows, then along the columns, the edges repeated.
    auto at = [&](const std::vector<int64_t> &v, int64_t r, int64_t c) {
      return v[std::clamp<int64_t>(r, 0, rows - 1) * cols + std::clamp<int64_t>(c, 0, cols - 1)];
    };
    std::vector<int64_t> down(rows * cols), blurred(rows * cols);
    for (int64_t r = 0; r < rows; r++)
      for (int64_t c = 0; c < cols; c++) down[r * cols + c] = at(cells, r - 1, c) + 2 * at(cells, r, c) + at(cells, r + 1, c);
    for (int64_t r = 0; r < rows; r++)
      for (int64_t c = 0; c < cols; c++) blurred[r * cols + c] = at(down, r, c - 1) + 2 * at(down, r, c) + at(down, r, c + 1);
    // sum over k of (K / k^2) |k^2 b - S_k(b)|, S_k the k x k window's sum (edges repeated).
    int64_t K = 1;
    for (int k : kScales) K *= k * k;
    std::vector<int64_t> contrast(rows * cols, 0), across(rows * cols);
    for (int k : kScales) {
      const int64_t r0 = k / 2;
      for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++) {
          int64_t sum = 0;
          for (int64_t d = -r0; d <= r0; d++) sum += at(blurred, r + d, c);
          across[r * cols + c] = sum;
        }
      for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++) {
          int64_t window = 0;
          for (int64_t d = -r0; d <= r0; d++) window += at(across, r, c + d);
          int64_t diff = blurred[r * cols + c] * k * k - window;
          contrast[r * cols + c] += (K / (k * k)) * (diff < 0 ? -diff : diff);
        }
    }
    const int64_t first = std::max_element(contrast.begin(), contrast.end()) - contrast.begin();  // the first maximum
    return {(first / cols) * f + f / 2, (first % cols) * f + f / 2};
  }

  // dali_cutmix.paste.centred_on_peaks: p's box, its half-sides around `peak` clipped to the image
  // (dali_cutmix.sampling.box_around's float32 operations), and its lambda unless p is a MixUp blend.
  void Centre(SampleParams &p, const std::array<int64_t, 2> &peak) const {
    const float hw[2] = {static_cast<float>(H_), static_cast<float>(W_)};
    float lo[2], hi[2];
    for (int k = 0; k < 2; k++) {
      float centre = static_cast<float>(peak[k]);
      lo[k] = std::min(std::max(centre - p.half[k], 0.0f), hw[k]);
      hi[k] = std::min(std::max(centre + p.half[k], 0.0f), hw[k]);
    }
    if (!p.blend) p.lam = 1.0f - ((hi[0] - lo[0]) * (hi[1] - lo[1])) / (hw[0] * hw[1]);
    p.box[0] = static_cast<int>(lo[0]), p.box[1] = static_cast<int>(lo[1]);
    p.box[2] = static_cast<int>(hi[0]), p.box[3] = static_cast<int>(hi[1]);
  }

  // ---- sampling: dali_cutmix.sampling.sample_mix, with a C++ generator seeded by the batch's draw ----

  float Uniform() { return static_cast<float>(rng_() >> 40) * (1.0f / 16777216.0f); }  // [0, 1), 24 bits

  float Beta(float a) {
    std::gamma_distribution<double> gamma(a, 1.0);
    double x = gamma(rng_), y = gamma(rng_);
    if (x + y == 0) return Uniform() < 0.5f ? 0.0f : 1.0f;  // both underflowed: a tiny alpha
    return static_cast<float>(x / (x + y));
  }

  void Permutation(int n, bool no_self) {
    std::vector<int> perm(n);
    for (;;) {
      for (int i = 0; i < n; i++) perm[i] = i;
      for (int i = n - 1; i > 0; i--) {
        std::uniform_int_distribution<int> pick(0, i);
        std::swap(perm[i], perm[pick(rng_)]);
      }
      bool fixed = false;
      for (int i = 0; i < n && no_self && n > 1; i++) fixed |= perm[i] == i;
      if (!fixed) break;
    }
    for (int i = 0; i < n; i++) params_[i].perm = perm[i];
  }

  void Sample(int n, const float *entropy) {
    uint32_t bits[2];
    std::memcpy(bits, entropy, sizeof(bits));
    std::seed_seq seq{bits[0], bits[1]};
    rng_.seed(seq);
    params_.assign(n, SampleParams{});
    int units = per_sample_ ? n : 1;
    for (int k = 0; k < units; k++) {
      Draws d;
      d.mix = Uniform() < probs_[k] ? 1.0f : 0.0f;
      d.cut = cutmix_ && mixup_ ? (Uniform() < switch_prob_ ? 1.0f : 0.0f) : (cutmix_ ? 1.0f : 0.0f);
      d.lam_cut = alpha_ > 0 && minmax_.empty() ? Beta(alpha_) : 1.0f;
      d.lam_mix = mixup_ ? Beta(mixup_alpha_) : 1.0f;
      for (int j = 0, draws = !minmax_.empty() ? 4 : resized_paste_ ? 3 : 2; j < draws; j++) d.u[j] = Uniform();
      Place(d, params_[k]);
    }
    for (int i = units; i < n; i++) params_[i] = params_[0];
    Permutation(n, no_self_);
  }

  // Box, lambda and blend from the draws: dali_cutmix.sampling.mix_from_draws, operation for operation.
  void Place(const Draws &d, SampleParams &p) const {
    const float hw[2] = {static_cast<float>(H_), static_cast<float>(W_)};
    const float *u = d.u;
    float c = d.mix * d.cut;
    float lo[2] = {0, 0}, hi[2] = {0, 0}, lam = 1.0f;
    if (salient_) {  // cutmix_half; the box is placed around the partner's peak when its pixels are here (Centre)
      float half_cut = std::sqrt(1.0f - d.lam_cut) * (c * 0.5f);
      for (int k = 0; k < 2; k++) p.half[k] = std::floor(hw[k] * half_cut), lo[k] = -p.half[k], hi[k] = p.half[k];
      lam = 1.0f - ((hi[0] - lo[0]) * (hi[1] - lo[1])) / (hw[0] * hw[1]);
    } else if (resized_paste_) {  // resize_box: one scale tau for both sides, the corner uniform
      float tau = std::min(u[0] * (resize_scale_[1] - resize_scale_[0]) + resize_scale_[0],
                           std::nextafter(resize_scale_[1], 0.0f));
      float size[2];
      for (int k = 0; k < 2; k++) {
        size[k] = std::floor(hw[k] * tau) * c;
        lo[k] = std::min(std::floor(u[1 + k] * ((hw[k] - size[k]) + 1.0f)), hw[k] - size[k]);
        hi[k] = lo[k] + size[k];
      }
      lam = 1.0f - (size[0] * size[1]) / (hw[0] * hw[1]);
    } else if (!minmax_.empty()) {  // minmax_box
      float size[2];
      for (int k = 0; k < 2; k++) {
        float low = std::floor(hw[k] * minmax_[0]), high = std::floor(hw[k] * minmax_[1]);
        size[k] = (low + std::floor(u[k] * (high - low))) * c;
        lo[k] = std::min(std::floor(u[2 + k] * ((hw[k] - size[k]) + 1.0f)), hw[k] - size[k]);
        hi[k] = lo[k] + size[k];
      }
      lam = 1.0f - (size[0] * size[1]) / (hw[0] * hw[1]);
    } else if (cutmix_) {  // cutmix_box
      float half_cut = std::sqrt(1.0f - d.lam_cut) * (c * 0.5f);
      for (int k = 0; k < 2; k++) {
        float half = std::floor(hw[k] * half_cut);
        float centre = std::min(std::floor(u[k] * hw[k]), hw[k] - 1.0f);
        lo[k] = std::clamp(centre - half, 0.0f, hw[k]);
        hi[k] = std::clamp(centre + half, 0.0f, hw[k]);
      }
      lam = 1.0f - ((hi[0] - lo[0]) * (hi[1] - lo[1])) / (hw[0] * hw[1]);
    }
    p.blend = false;
    if (mixup_) {
      float blend = d.mix - c;
      lam = lam * (1.0f - blend) + d.lam_mix * blend;
      p.blend = blend > 0;
    }
    p.box[0] = static_cast<int>(lo[0]), p.box[1] = static_cast<int>(lo[1]);
    p.box[2] = static_cast<int>(hi[0]), p.box[3] = static_cast<int>(hi[1]);
    p.lam = lam;
  }

  float alpha_, mixup_alpha_, prob_, switch_prob_;
  bool per_sample_, no_self_;
  std::vector<float> minmax_, resize_scale_;
  bool resized_paste_ = false, salient_ = false;  // ResizeMix; SaliencyMix
  bool normalize_;
  std::string output_layout_;
  bool resize_;
  std::pair<WriteFn, SumFn> copies_;  // Planes and SumRows for this CPU
  bool float_in_ = false;
  DALIDataType dtype_;
  std::vector<float> mean_, std_;
  bool cutmix_ = true, mixup_ = false;
  int64_t H_ = 0, W_ = 0, C_ = 0;
  std::vector<float> probs_;
  // One iteration's state, from SetupImpl to RunImpl: DALI runs an operator instance's Setup and Run
  // back to back and never two iterations of it at once (executor2's ExecNode: each main task depends
  // on the previous iteration's, exec_graph.h; the legacy executors run a stage's operators in order).
  std::vector<SampleParams> params_;
  std::vector<std::array<int64_t, 2>> peaks_;  // SaliencyMix: each image's saliency peak
  std::vector<float> table_, mean_c_, inv_std_c_;
  std::mt19937_64 rng_;
};

}  // namespace dali_cutmix

DALI_REGISTER_OPERATOR(dali_cutmix__Mix, ::dali_cutmix::Mix, ::dali::CPU);

DALI_SCHEMA(dali_cutmix__Mix)
    .DocStr(R"(CutMix, ResizeMix or SaliencyMix (optionally switching with MixUp) of a uniformly shaped uint8 HWC batch, fused with
normalisation, flip and layout change (and with a bilinear resize, given size). Outputs: images, labels_b, lam, perm, boxes (y1, x1, y2, x2), blend.)")
    .NumInput(3, 4)
    .InputDox(0, "images", "TensorList of uint8 HWC", "The batch, one shape for all samples.")
    .InputDox(1, "labels", "TensorList", "Per-sample labels; labels_b is them gathered through perm.")
    .InputDox(2, "entropy", "TensorList of float32",
              "A per-batch draw (sample 0's first two values seed the operator's generator).")
    .InputDox(3, "prob", "TensorList of float32 scalars",
              "Optional per-sample probability of mixing (mode elem: sample i's; mode batch: sample 0's).")
    .NumOutput(6)
    .AddOptionalArg("alpha", "CutMix's Beta(alpha, alpha); 0 turns CutMix off.", 1.0f)
    .AddOptionalArg("mixup_alpha", "MixUp's Beta; 0 turns MixUp off.", 0.0f)
    .AddOptionalArg("prob", "Probability that a batch (mode batch) or sample (mode elem) is mixed.", 1.0f)
    .AddOptionalArg("switch_prob", "With both on, the probability of CutMix rather than MixUp.", 0.5f)
    .AddOptionalArg("mode", "\"batch\": one draw for the batch; \"elem\": one per sample.", std::string("batch"))
    .AddOptionalArg("no_self", "Partners are never the sample itself.", false)
    .AddOptionalArg("minmax", "Box sides as fractions (min, max) of H and W, like timm.", std::vector<float>{})
    .AddOptionalArg("paste",
                    "\"cut\": the partner's pixels in the box (CutMix); \"resize\": the partner's whole image, "
                    "resampled into a box of one scale drawn from resize_scale (ResizeMix).",
                    std::string("cut"))
    .AddOptionalArg("resize_scale", "ResizeMix's box scale range (min, max), a fraction of H and W (float32).",
                    std::vector<float>{0.1f, 0.8f})
    .AddOptionalArg("centre",
                    "\"random\": the box centre uniform (CutMix); \"saliency\": on the partner's saliency "
                    "peak (SaliencyMix, the map of dali_cutmix.saliency).",
                    std::string("random"))
    .AddOptionalArg<std::vector<float>>("mean", "Subtracted per channel (turns normalisation on).", nullptr)
    .AddOptionalArg<std::vector<float>>("std", "Divides per channel (turns normalisation on).", nullptr)
    .AddOptionalArg("mirror", "Flip horizontally (per sample), after mixing.", 0, true)
    .AddOptionalArg("output_layout", "\"HWC\" or \"CHW\".", std::string("HWC"))
    .AddOptionalTypeArg("dtype", "FLOAT, or UINT8 without normalisation (the default then).")
    .AddOptionalArg<std::vector<int>>("size",
                                      "(H, W): resize every image to it first (bilinear, as fn.resize with "
                                      "INTERP_LINEAR and no antialiasing); the images may then differ in shape.",
                                      nullptr, true)
    .AddOptionalArg("expect_size", "(H, W) the images must have (cutmix's size hint); empty: any.",
                    std::vector<int>{})
    .AddOptionalArg("isa",
                    "Which compiled copy writes the pixels: \"auto\" (AVX2 where the CPU has it), \"portable\", "
                    "\"avx2\" or \"avx512\" (x86-64 builds with GCC); every copy writes the same bytes.",
                    std::string("auto"));
