// typoclip: QuickGELU, x * sigmoid(1.702 x) = x / (1 + exp(-1.702 x)), in one pass over the
// buffer, with AVX2 and FMA.
//
// Compiled alone with -mavx2 -mfma and called only after a run-time CPU check (in
// onednn_shim.cpp), so nothing here may be reached on a CPU without AVX2. It includes no libtorch
// header: inline functions of a header compiled here with AVX2 could be picked by the linker for
// the rest of the program. The exponential is inlined (Cephes' expf: range reduction by ln 2 in
// two parts, a degree-6 polynomial, the power of two built in the exponent bits; about 1 ulp),
// which is what makes one pass faster than ATen's three.
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

static inline __m256 exp_avx2(__m256 x) {
  // Above this exp overflows to +inf; below the low bound it is 0 (to within denormals).
  const __m256 hi = _mm256_set1_ps(88.3762626647950f);
  const __m256 lo = _mm256_set1_ps(-88.3762626647949f);
  __m256 xc = _mm256_max_ps(_mm256_min_ps(x, hi), lo);
  // n = round(x / ln 2); r = x - n ln 2 (ln 2 split so n ln2_hi is exact).
  __m256 n = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(1.44269504088896341f)),
                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), xc);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500E-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507E-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073E-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894E-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459E-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201E-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  // 2^n in the exponent bits (n in [-127, 128]: split in two factors so neither overflows).
  __m256i ni = _mm256_cvtps_epi32(n);
  __m256i half = _mm256_srai_epi32(ni, 1);
  __m256 f1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(half, _mm256_set1_epi32(127)), 23));
  __m256 f2 = _mm256_castsi256_ps(
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_sub_epi32(ni, half), _mm256_set1_epi32(127)), 23));
  __m256 y = _mm256_mul_ps(_mm256_mul_ps(p, f1), f2);
  // Past the bounds: +inf above, 0 below.
  y = _mm256_blendv_ps(y, _mm256_set1_ps(INFINITY), _mm256_cmp_ps(x, hi, _CMP_GT_OQ));
  y = _mm256_blendv_ps(y, _mm256_setzero_ps(), _mm256_cmp_ps(x, lo, _CMP_LT_OQ));
  return y;
}

// p[i] = p[i] / (1 + exp(-1.702 p[i])) for i < n, in place.
void typoclip_quick_gelu_avx2(float *p, int64_t n) {
  const __m256 minus_k = _mm256_set1_ps(-1.702f);
  const __m256 one = _mm256_set1_ps(1.0f);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 x = _mm256_loadu_ps(p + i);
    __m256 e = exp_avx2(_mm256_mul_ps(x, minus_k));
    _mm256_storeu_ps(p + i, _mm256_div_ps(x, _mm256_add_ps(one, e)));
  }
  for (; i < n; i++) {
    p[i] = p[i] / (1.0f + expf(-1.702f * p[i]));
  }
}
