/* Flash attention (Dao et al., 2022) for x86 CPUs with AVX-512: out = softmax(q k^T * scale) v, a block of keys
 * at a time with a running row max and sum, so the (Lq, Lk) score matrix is never stored.
 *
 * float32 uses FMA; bfloat16 the AVX512_BF16 pair dot product (vdpbf16ps) with float32 scores, softmax and
 * accumulators, the probabilities rounded to bfloat16 for the second product, as torch's own kernel does.
 * Why not torch's kernel: at the UNet's head sizes (40-160) it spends ~1.3 ns per score element on a 2-core
 * AVX-512 CPU, most of it outside the products; this one packs every key/value block once per call, keeps 8
 * query rows' scores in L1 and computes exp2 inline (bfloat16 2-2.5x, float32 1.2-1.6x faster there). Where the
 * CPU has AMX, torch's bfloat16 kernel is the faster one (see sdkit_attention_caps).
 *
 * Built and loaded by cpu_attention.py. The file is compiled without -m flags: only the functions marked
 * F32/BF16 carry AVX-512 code, and they run only where sdkit_attention_caps() says the CPU has it. */

#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define F32 __attribute__((target("avx512f,avx512dq,fma")))
#define BF16 __attribute__((target("avx512f,avx512dq,fma,avx512bw,avx512vl,avx512bf16")))
#define INLINE static inline __attribute__((always_inline))

enum {
    R = 8,     /* query rows per micro-kernel: their scores, (R, BK) float32, stay in L1 */
    BQ = 128,  /* query rows per task: the packed key/value block is reused across them from L2 */
    BK = 512,  /* keys per block */
    MAX_D = 256,
};

typedef struct {
    int bf16, H, Lq, Lk, D, Dp;     /* Dp: D rounded up to 16 lanes */
    float c;                        /* scale * log2(e): scores in base 2, so exp(x) = exp2(x * log2(e)) */
    const char *q, *k, *v;
    char *o;
    int64_t qs[3], ks[3], vs[3], os[3]; /* strides in elements over (b, h, row); the last dim is contiguous */
    int qtiles, kblocks, krows; /* krows: key rows per packed block, BK or fewer keys rounded up to 32 */
    void *kp, *vp; /* keys and values of every (b, h), packed a block at a time for the two products */
} Job;

typedef struct {
    float *s;      /* (R, BK) scores, then float32 probabilities */
    uint16_t *pb;  /* (R, BK) bfloat16 probabilities */
    float *acc;    /* (BQ, Dp) output accumulators */
    float m[BQ], l[BQ], alpha[BQ]; /* running max (base 2), running sum, rescale of the accumulators */
} Scratch;

static const char *row(const char *base, const int64_t *st, int b, int h, int i, int elt) {
    return base + (b * st[0] + h * st[1] + i * st[2]) * elt;
}

static int up32(int n) { /* the products go 32 keys at a time */
    return (n + 31) / 32 * 32;
}

static int block_keys(const Job *job, int blk) { /* BK, or fewer in the last block */
    return job->Lk - blk * BK < BK ? job->Lk - blk * BK : BK;
}

/* ---- float32 helpers, inlined into both kernels ---- */

/* 2^x, x <= 0: 2^n * p(f) with n = round(x), f in [-0.5, 0.5] and Cephes' exp2f polynomial (~1 ulp).
 * x = -inf (a masked key) gives 0: the clamp keeps f finite and 2^-160 underflows to 0. */
INLINE F32 __m512 exp2_ps(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-160.f));
    __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_sub_ps(x, n);
    __m512 p = _mm512_set1_ps(1.535336188319500e-4f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.339887440266574e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.618437357674640e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.550332471162809e-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.402264791363012e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931472028550421e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f));
    return _mm512_scalef_ps(p, n);
}

static inline __mmask16 lanes(int n) { /* the first n of 16 */
    return n >= 16 ? 0xffff : n <= 0 ? 0 : (__mmask16)((1u << n) - 1);
}

/* Stores row r's 32 scores a, b (c-scaled; keys from nk - j on masked to -inf) at s + j, and folds them into
 * the row's running block max mx. */
INLINE F32 void store_scores(float *s, int j, int nk, float c, __m512 a, __m512 b, __m512 *mx) {
    __m512 vc = _mm512_set1_ps(c), masked = _mm512_set1_ps(-INFINITY);
    a = _mm512_mask_mul_ps(masked, lanes(nk - j), a, vc);
    b = _mm512_mask_mul_ps(masked, lanes(nk - j - 16), b, vc);
    _mm512_store_ps(s + j, a);
    _mm512_store_ps(s + j + 16, b);
    *mx = _mm512_max_ps(*mx, _mm512_max_ps(a, b));
}

/* Online softmax for R rows of base-2 scores s (R, BK), the first nkv filled, whose block maxima are bmax:
 * update each row's running max m and sum l, set alpha to the factor that rescales its accumulators, and
 * overwrite the scores with the probabilities 2^(s - m). */
INLINE F32 void softmax_rows(float *s, int nkv, const __m512 *bmax, float *m, float *l, float *alpha) {
    for (int r = 0; r < R; r++) {
        float *sr = s + r * BK;
        float m_new = fmaxf(m[r], _mm512_reduce_max_ps(bmax[r]));
        __m512 neg_m = _mm512_set1_ps(-m_new), sum = _mm512_setzero_ps();
        for (int j = 0; j < nkv; j += 16) {
            __m512 p = exp2_ps(_mm512_add_ps(_mm512_load_ps(sr + j), neg_m));
            sum = _mm512_add_ps(sum, p);
            _mm512_store_ps(sr + j, p);
        }
        alpha[r] = exp2f(m[r] - m_new); /* 0 on the first block, where m = -inf */
        l[r] = l[r] * alpha[r] + _mm512_reduce_add_ps(sum);
        m[r] = m_new;
    }
}

static uint16_t to_bf16(float x) { /* round to nearest even, as torch does */
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7fffffff) > 0x7f800000)
        return (uint16_t)((u >> 16) | 0x40); /* NaN stays NaN */
    return (uint16_t)((u + 0x7fff + ((u >> 16) & 1)) >> 16);
}

/* out rows = acc / l, for the tile's nq valid rows */
static void write_rows(const Job *job, const Scratch *sc, int b, int h, int q0, int nq) {
    for (int r = 0; r < nq; r++) {
        const float *a = sc->acc + r * job->Dp;
        float inv = 1.f / sc->l[r];
        char *out = (char *)row(job->o, job->os, b, h, q0 + r, job->bf16 ? 2 : 4);
        for (int d = 0; d < job->D; d++) {
            if (job->bf16)
                ((uint16_t *)out)[d] = to_bf16(a[d] * inv);
            else
                ((float *)out)[d] = a[d] * inv;
        }
    }
}

/* The value dims a product pass covers: up to 3 vectors of 16, the last of them half (8) where D ends so */
typedef struct {
    int full, half;
} Cols;

static Cols cols(int rem) {
    Cols k = {rem / 16, 0};
    if (rem % 16 > 8)
        k.full++;
    else if (rem % 16)
        k.half = 1;
    return k;
}

/* The accumulators of one value pass, (R rows) x (full vectors of 16 + half a vector), rescaled by alpha */
INLINE F32 void load_acc(const float *acc, const float *alpha, int Dp, int g0, const int full, const int half,
                         __m512 o[R][3], __m256 oh[R]) {
    for (int r = 0; r < R; r++) {
        for (int g = 0; g < full; g++)
            o[r][g] = _mm512_mul_ps(_mm512_load_ps(acc + r * Dp + g0 + 16 * g), _mm512_set1_ps(alpha[r]));
        if (half)
            oh[r] = _mm256_mul_ps(_mm256_load_ps(acc + r * Dp + g0 + 16 * full), _mm256_set1_ps(alpha[r]));
    }
}

INLINE F32 void store_acc(float *acc, int Dp, int g0, const int full, const int half, __m512 o[R][3],
                          __m256 oh[R]) {
    for (int r = 0; r < R; r++) {
        for (int g = 0; g < full; g++)
            _mm512_store_ps(acc + r * Dp + g0 + 16 * g, o[r][g]);
        if (half)
            _mm256_store_ps(acc + r * Dp + g0 + 16 * full, oh[r]);
    }
}

/* acc += p v over value dims 0..D in passes of up to 3 vectors of 16 (the last maybe half): one call of pv per
 * pass with constant (full, half), so that each keeps its accumulators in registers */
#define PV_PASSES(pv, p, vp, acc, alpha, n, D, Dp)                                                                   \
    do {                                                                                                           \
        int g0 = 0;                                                                                                \
        for (; (D) - g0 > 48; g0 += 48)                                                                            \
            pv(p, vp, acc, alpha, n, Dp, g0, 3, 0);                                                                \
        Cols k = cols((D) - g0);                                                                                   \
        if (k.full == 3)                                                                                           \
            pv(p, vp, acc, alpha, n, Dp, g0, 3, 0);                                                                \
        else if (k.full == 2)                                                                                      \
            k.half ? pv(p, vp, acc, alpha, n, Dp, g0, 2, 1) : pv(p, vp, acc, alpha, n, Dp, g0, 2, 0);              \
        else if (k.full == 1)                                                                                      \
            k.half ? pv(p, vp, acc, alpha, n, Dp, g0, 1, 1) : pv(p, vp, acc, alpha, n, Dp, g0, 1, 0);              \
        else                                                                                                       \
            pv(p, vp, acc, alpha, n, Dp, g0, 0, 1);                                                                \
    } while (0)

/* One step of a query tile: R rows (qr) against one packed key/value block of nk keys. Updates the rows' running
 * max m, sum l and accumulators acc (R, Dp); sc->s and sc->pb are its working space. */
typedef void Step(const Job *job, Scratch *sc, const char *const *qr, const void *kp, const void *vp, int nk,
                  float *m, float *l, float *alpha, float *acc);

/* ---- float32 ---- */

/* Keys of block blk as (BK/16, D, 16), values as (BK, Dp); zeros past the last key and dim */
static void pack_f32(const Job *job, int b, int h, int blk, float *kp, float *vp) {
    const int D = job->D, Dp = job->Dp, k0 = blk * BK, nk = block_keys(job, blk);
    for (int j = 0; j < up32(nk); j++) { /* the keys the products read */
        const float *kr = (const float *)row(job->k, job->ks, b, h, k0 + j, 4);
        const float *vr = (const float *)row(job->v, job->vs, b, h, k0 + j, 4);
        float *kd = kp + (int64_t)(j / 16) * D * 16 + j % 16;
        for (int d = 0; d < D; d++)
            kd[d * 16] = j < nk ? kr[d] : 0.f;
        for (int d = 0; d < Dp; d++)
            vp[(int64_t)j * Dp + d] = j < nk && d < D ? vr[d] : 0.f;
    }
}

/* s[r][j] = c * (q_r . k_j) for the block's nk keys, 32 at a time (-inf past nk); bmax: each row's maximum */
INLINE F32 void scores_f32(const float *const *qr, const float *kp, float *s, int nk, int D, float c,
                           __m512 *bmax) {
    for (int r = 0; r < R; r++)
        bmax[r] = _mm512_set1_ps(-INFINITY);
    for (int j = 0; j < nk; j += 32) {
        const float *k0 = kp + (int64_t)(j / 16) * D * 16, *k1 = k0 + D * 16;
        __m512 acc[R][2];
        for (int r = 0; r < R; r++)
            acc[r][0] = acc[r][1] = _mm512_setzero_ps();
        for (int d = 0; d < D; d++) {
            __m512 a = _mm512_load_ps(k0 + d * 16), b = _mm512_load_ps(k1 + d * 16);
            for (int r = 0; r < R; r++) {
                __m512 x = _mm512_set1_ps(qr[r][d]);
                acc[r][0] = _mm512_fmadd_ps(x, a, acc[r][0]);
                acc[r][1] = _mm512_fmadd_ps(x, b, acc[r][1]);
            }
        }
        for (int r = 0; r < R; r++)
            store_scores(s + r * BK, j, nk, c, acc[r][0], acc[r][1], &bmax[r]);
    }
}

/* acc[r][g0:] = alpha_r * acc + sum_j p[r][j] v_j over the block's nk keys, for `full` vectors of 16 value dims
 * and `half` of 8; vp is (BK, Dp) */
INLINE F32 void pv_f32(const float *p, const float *vp, float *acc, const float *alpha, int nk, int Dp, int g0,
                       const int full, const int half) {
    __m512 o[R][3];
    __m256 oh[R];
    load_acc(acc, alpha, Dp, g0, full, half, o, oh);
    for (int j = 0; j < nk; j++) {
        const float *vj = vp + (int64_t)j * Dp + g0;
        __m512 v[3];
        for (int g = 0; g < full; g++)
            v[g] = _mm512_load_ps(vj + 16 * g);
        __m256 vh = half ? _mm256_load_ps(vj + 16 * full) : _mm256_setzero_ps();
        for (int r = 0; r < R; r++) {
            __m512 x = _mm512_set1_ps(p[r * BK + j]);
            for (int g = 0; g < full; g++)
                o[r][g] = _mm512_fmadd_ps(x, v[g], o[r][g]);
            if (half)
                oh[r] = _mm256_fmadd_ps(_mm512_castps512_ps256(x), vh, oh[r]);
        }
    }
    store_acc(acc, Dp, g0, full, half, o, oh);
}

F32 static void step_f32(const Job *job, Scratch *sc, const char *const *qr, const void *kp, const void *vp,
                         int nk, float *m, float *l, float *alpha, float *acc) {
    __m512 bmax[R];
    scores_f32((const float *const *)qr, kp, sc->s, nk, job->D, job->c, bmax);
    softmax_rows(sc->s, up32(nk), bmax, m, l, alpha);
    PV_PASSES(pv_f32, sc->s, vp, acc, alpha, nk, job->D, job->Dp);
}

/* ---- bfloat16: products over pairs (vdpbf16ps: lane += a[2i] b[2i] + a[2i+1] b[2i+1]) ---- */

INLINE BF16 __m512bh pair(const uint16_t *x) { /* x[0], x[1] in every lane */
    uint32_t u;
    memcpy(&u, x, 4);
    return (__m512bh)_mm512_set1_epi32((int)u);
}

/* Keys of block blk as (BK/16, D/2, 16, 2), values as (BK/2, Dp, 2); zeros past the last key and dim */
static void pack_bf16(const Job *job, int b, int h, int blk, uint16_t *kp, uint16_t *vp) {
    const int D = job->D, Dp = job->Dp, k0 = blk * BK, nk = block_keys(job, blk);
    for (int j = 0; j < up32(nk); j++) { /* the keys the products read */
        const uint16_t *kr = (const uint16_t *)row(job->k, job->ks, b, h, k0 + j, 2);
        const uint16_t *vr = (const uint16_t *)row(job->v, job->vs, b, h, k0 + j, 2);
        uint16_t *kd = kp + (int64_t)(j / 16) * D * 16 + (j % 16) * 2;
        for (int d = 0; d < D; d++)
            kd[(d / 2) * 32 + d % 2] = j < nk ? kr[d] : 0;
        uint16_t *vd = vp + (int64_t)(j / 2) * Dp * 2 + j % 2;
        for (int d = 0; d < Dp; d++)
            vd[d * 2] = j < nk && d < D ? vr[d] : 0;
    }
}

/* as scores_f32; kp is (BK/16, D/2, 16, 2): key j's dims 2i, 2i+1 side by side */
INLINE BF16 void scores_bf16(const uint16_t *const *qr, const uint16_t *kp, float *s, int nk, int D, float c,
                             __m512 *bmax) {
    for (int r = 0; r < R; r++)
        bmax[r] = _mm512_set1_ps(-INFINITY);
    for (int j = 0; j < nk; j += 32) {
        const uint16_t *k0 = kp + (int64_t)(j / 16) * D * 16, *k1 = k0 + D * 16;
        __m512 acc[R][2];
        for (int r = 0; r < R; r++)
            acc[r][0] = acc[r][1] = _mm512_setzero_ps();
        for (int i = 0; i < D / 2; i++) {
            __m512bh a = (__m512bh)_mm512_load_si512(k0 + i * 32), b = (__m512bh)_mm512_load_si512(k1 + i * 32);
            for (int r = 0; r < R; r++) {
                __m512bh x = pair(qr[r] + 2 * i);
                acc[r][0] = _mm512_dpbf16_ps(acc[r][0], x, a);
                acc[r][1] = _mm512_dpbf16_ps(acc[r][1], x, b);
            }
        }
        for (int r = 0; r < R; r++)
            store_scores(s + r * BK, j, nk, c, acc[r][0], acc[r][1], &bmax[r]);
    }
}

/* The float32 probabilities s (R, BK), first nkv of each row, rounded to bfloat16 (nearest even) in pb */
INLINE BF16 void round_probs(const float *s, uint16_t *pb, int nkv) {
    for (int r = 0; r < R; r++)
        for (int j = 0; j < nkv; j += 32)
            _mm512_store_si512(pb + r * BK + j, (__m512i)_mm512_cvtne2ps_pbh(_mm512_load_ps(s + r * BK + j + 16),
                                                                             _mm512_load_ps(s + r * BK + j)));
}

/* as pv_f32 over key pairs i < nk2; vp is (BK/2, Dp, 2): values of keys 2i, 2i+1 side by side */
INLINE BF16 void pv_bf16(const uint16_t *p, const uint16_t *vp, float *acc, const float *alpha, int nk2, int Dp,
                         int g0, const int full, const int half) {
    __m512 o[R][3];
    __m256 oh[R];
    load_acc(acc, alpha, Dp, g0, full, half, o, oh);
    for (int i = 0; i < nk2; i++) {
        const uint16_t *vi = vp + ((int64_t)i * Dp + g0) * 2;
        __m512bh v[3];
        for (int g = 0; g < full; g++)
            v[g] = (__m512bh)_mm512_load_si512(vi + 32 * g);
        __m256bh vh = (__m256bh)(half ? _mm256_load_si256((const __m256i *)(vi + 32 * full)) : _mm256_setzero_si256());
        for (int r = 0; r < R; r++) {
            __m512bh x = pair(p + r * BK + 2 * i);
            for (int g = 0; g < full; g++)
                o[r][g] = _mm512_dpbf16_ps(o[r][g], x, v[g]);
            if (half)
                oh[r] = _mm256_dpbf16_ps(oh[r], (__m256bh)_mm512_castsi512_si256((__m512i)x), vh);
        }
    }
    store_acc(acc, Dp, g0, full, half, o, oh);
}

BF16 static void step_bf16(const Job *job, Scratch *sc, const char *const *qr, const void *kp, const void *vp,
                           int nk, float *m, float *l, float *alpha, float *acc) {
    __m512 bmax[R];
    int nkv = up32(nk);
    scores_bf16((const uint16_t *const *)qr, kp, sc->s, nk, job->D, job->c, bmax);
    softmax_rows(sc->s, nkv, bmax, m, l, alpha);
    round_probs(sc->s, sc->pb, nkv);
    /* over key pairs: an odd nk pairs its last key with a zero probability and value */
    PV_PASSES(pv_bf16, sc->pb, vp, acc, alpha, (nk + 1) / 2, job->D, job->Dp);
}

/* ---- tasks and threads ---- */

static void pack(const Job *job, int t) { /* t: a (b, h, key block) */
    int bh = t / job->kblocks, blk = t % job->kblocks, b = bh / job->H, h = bh % job->H;
    int64_t at = (int64_t)t * job->krows, elt = job->bf16 ? 2 : 4;
    char *kp = (char *)job->kp + at * job->D * elt, *vp = (char *)job->vp + at * job->Dp * elt;
    if (job->bf16)
        pack_bf16(job, b, h, blk, (uint16_t *)kp, (uint16_t *)vp);
    else
        pack_f32(job, b, h, blk, (float *)kp, (float *)vp);
}

static void attend(const Job *job, Scratch *sc, int t) { /* t: a (b, h, tile of BQ query rows) */
    int bh = t / job->qtiles, q0 = t % job->qtiles * BQ, b = bh / job->H, h = bh % job->H;
    int nq = job->Lq - q0 < BQ ? job->Lq - q0 : BQ, elt = job->bf16 ? 2 : 4;
    Step *step = job->bf16 ? step_bf16 : step_f32;
    for (int r = 0; r < BQ; r++) {
        sc->m[r] = -INFINITY;
        sc->l[r] = 0.f;
    }
    memset(sc->acc, 0, sizeof(float) * job->Dp * ((nq + R - 1) / R * R));
    for (int blk = 0; blk < job->kblocks; blk++) {
        int64_t at = ((int64_t)bh * job->kblocks + blk) * job->krows;
        const char *kp = (const char *)job->kp + at * job->D * elt, *vp = (const char *)job->vp + at * job->Dp * elt;
        int nk = block_keys(job, blk);
        for (int r0 = 0; r0 < nq; r0 += R) {
            const char *qr[R];
            for (int r = 0; r < R; r++) /* rows past the tile repeat its last one; they are not written out */
                qr[r] = row(job->q, job->qs, b, h, q0 + (r0 + r < nq ? r0 + r : nq - 1), elt);
            step(job, sc, qr, kp, vp, nk, sc->m + r0, sc->l + r0, sc->alpha + r0, sc->acc + r0 * job->Dp);
        }
    }
    write_rows(job, sc, b, h, q0, nq);
}

static void scratch_free(Scratch *sc) {
    free(sc->s);
    free(sc->pb);
    free(sc->acc);
}

static int scratch_alloc(Scratch *sc, int Dp) {
    sc->s = aligned_alloc(64, sizeof(float) * R * BK);
    sc->pb = aligned_alloc(64, sizeof(uint16_t) * R * BK);
    sc->acc = aligned_alloc(64, sizeof(float) * BQ * Dp);
    return sc->s && sc->pb && sc->acc;
}

/* Bit 0: use the float32 kernel on this CPU; bit 1: the bfloat16 one. Not the bfloat16 one where the CPU has
 * AMX: torch's kernel runs its products on the tile unit there, 2-3x faster than this one (16-core Xeon). */
int sdkit_attention_caps(void) {
    __builtin_cpu_init();
    int f32 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq");
    int bf16 = f32 && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("avx512bf16") && !__builtin_cpu_supports("amx-bf16");
    return f32 | bf16 << 1;
}

/* q: (B, H, Lq, D), k and v: (B, H, Lk, D), out: (B, H, Lq, D), each with the given element strides over its
 * first three dims and a contiguous last one. Returns 0, or -1 for arguments out of range or no memory. */
int sdkit_attention(int bf16, int B, int H, int Lq, int Lk, int D, float scale, const void *q, const int64_t *qs,
                    const void *k, const int64_t *ks, const void *v, const int64_t *vs, void *out,
                    const int64_t *os, int threads) {
    if (B < 1 || H < 1 || Lq < 1 || Lk < 1 || D < 1 || D > MAX_D || (bf16 && D % 2))
        return -1;
    Job job = {.bf16 = bf16, .H = H, .Lq = Lq, .Lk = Lk, .D = D, .Dp = (D + 15) / 16 * 16,
               .c = scale * 1.4426950408889634f, .q = q, .k = k, .v = v, .o = out,
               .qtiles = (Lq + BQ - 1) / BQ, .kblocks = (Lk + BK - 1) / BK,
               .krows = Lk < BK ? up32(Lk) : BK};
    memcpy(job.qs, qs, sizeof job.qs);
    memcpy(job.ks, ks, sizeof job.ks);
    memcpy(job.vs, vs, sizeof job.vs);
    memcpy(job.os, os, sizeof job.os);
    int n = threads < 1 ? 1 : threads;
    size_t blocks = (size_t)B * H * job.kblocks * job.krows * (bf16 ? 2 : 4); /* bytes per key and value dim */
    job.kp = aligned_alloc(64, blocks * job.D); /* rows by 32 make every size a multiple of 64 bytes */
    job.vp = aligned_alloc(64, blocks * job.Dp);
    Scratch *sc = calloc(n, sizeof *sc);
    int ok = job.kp && job.vp && sc;
    for (int i = 0; ok && i < n; i++)
        ok = scratch_alloc(&sc[i], job.Dp);
    /* OpenMP: linked by soname, this is the libgomp torch has loaded, so its warm thread pool runs the tasks */
    if (ok) {
#pragma omp parallel num_threads(n)
        {
#pragma omp for schedule(dynamic)
            for (int t = 0; t < B * H * job.kblocks; t++) /* (b, h, key block); then all wait at the loop's end */
                pack(&job, t);
            Scratch *mine = &sc[omp_get_thread_num()];
#pragma omp for schedule(dynamic)
            for (int t = 0; t < B * H * job.qtiles; t++) /* (b, h, tile of BQ query rows) */
                attend(&job, mine, t);
        }
    }
    for (int i = 0; sc && i < n; i++)
        scratch_free(&sc[i]);
    free(sc);
    free(job.kp);
    free(job.vp);
    return ok ? 0 : -1;
}
