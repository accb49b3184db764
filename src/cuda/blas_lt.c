/* cuBLASLt GEMMs with the algorithm choice cached per shape (blas_lt.h). */
#include "cuda/blas_lt.h"

#include <cublasLt.h>
#include <stdlib.h>
#include <string.h>

/* Distinct (shape, alignment) keys a model's prefill uses: a handful per
 * weight kind and batch size; more only cost a repeated query. */
#define LT_CACHE 48

typedef struct lt_key {
    cudaDataType ab;
    uint64_t rows, m, depth, lda, ldb, ldc;
    unsigned align_a, align_b, align_c;
} lt_key;

typedef struct lt_entry {
    bool used, declined;
    lt_key key;
    cublasLtMatrixLayout_t la, lb, lc;
    cublasLtMatmulAlgo_t algo;
} lt_entry;

struct blas_lt {
    cublasLtHandle_t h;
    cublasLtMatmulDesc_t op_float, op_int; /* Aᵀ·B with f32 / int32 arithmetic */
    lt_entry cache[LT_CACHE];
    unsigned next; /* the entry replaced when the cache is full */
};

static bool lt_ok(cublasStatus_t st, const char *what, qerr *err)
{
    if (st == CUBLAS_STATUS_SUCCESS)
        return true;
    qerr_set(err, QRUN_ERR_DEVICE, "matmul: %s: cuBLASLt %s", what, cublasLtGetStatusName(st));
    return false;
}

static bool make_op(cublasLtMatmulDesc_t *op, cublasComputeType_t compute, cudaDataType scale,
                    qerr *err)
{
    if (!lt_ok(cublasLtMatmulDescCreate(op, compute, scale), "cublasLtMatmulDescCreate", err)) {
        *op = NULL;
        return false;
    }
    const cublasOperation_t t = CUBLAS_OP_T;
    return lt_ok(cublasLtMatmulDescSetAttribute(*op, CUBLASLT_MATMUL_DESC_TRANSA, &t, sizeof t),
                 "cublasLtMatmulDescSetAttribute", err);
}

blas_lt *blas_lt_create(qerr *err)
{
    blas_lt *lt = calloc(1, sizeof *lt);
    if (!lt) {
        qerr_set(err, QRUN_ERR_NO_MEMORY, "matmul: out of host memory");
        return NULL;
    }
    if (!lt_ok(cublasLtCreate(&lt->h), "cublasLtCreate", err)) {
        lt->h = NULL;
        blas_lt_free(lt);
        return NULL;
    }
    if (!make_op(&lt->op_float, CUBLAS_COMPUTE_32F, CUDA_R_32F, err) ||
        !make_op(&lt->op_int, CUBLAS_COMPUTE_32I, CUDA_R_32I, err)) {
        blas_lt_free(lt);
        return NULL;
    }
    return lt;
}

static void entry_clear(lt_entry *e)
{
    if (e->la)
        cublasLtMatrixLayoutDestroy(e->la);
    if (e->lb)
        cublasLtMatrixLayoutDestroy(e->lb);
    if (e->lc)
        cublasLtMatrixLayoutDestroy(e->lc);
    memset(e, 0, sizeof *e);
}

void blas_lt_free(blas_lt *lt)
{
    if (!lt)
        return;
    for (int i = 0; i < LT_CACHE; i++)
        entry_clear(&lt->cache[i]);
    if (lt->op_float)
        cublasLtMatmulDescDestroy(lt->op_float);
    if (lt->op_int)
        cublasLtMatmulDescDestroy(lt->op_int);
    if (lt->h)
        cublasLtDestroy(lt->h);
    free(lt);
}

/* The alignment cuBLASLt may assume for p: its lowest set address bit, at
 * most 256 (the heuristic's default assumption). */
static unsigned align_of(const void *p)
{
    uintptr_t a = (uintptr_t)p;
    unsigned al = 1;
    while (al < 256 && !(a & al))
        al <<= 1;
    return al;
}

/* Preference attributes: the workspace limit is a uint64_t, the
 * alignments uint32_t. */
static bool set_pref(cublasLtMatmulPreference_t p, cublasLtMatmulPreferenceAttributes_t attr,
                     uint64_t v, qerr *err)
{
    const uint32_t v32 = (uint32_t)v;
    const bool wide = attr == CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES;
    return lt_ok(cublasLtMatmulPreferenceSetAttribute(p, attr, wide ? (const void *)&v
                                                                    : (const void *)&v32,
                                                      wide ? sizeof v : sizeof v32),
                 "cublasLtMatmulPreferenceSetAttribute", err);
}

/* The heuristic's first answer that needs no workspace: asked under a
 * small workspace limit, as with a limit of 0 cuBLASLt ranks slower int8
 * kernels first (an H100: 4544 x 18176 x 512 in 163 us instead of 91) even
 * though the fast ones it ranks first otherwise need no workspace either.
 * found: 0 when no algorithm takes the problem. */
static bool first_free_algo(blas_lt *lt, cublasLtMatmulDesc_t op, lt_entry *e, uint64_t limit,
                            int *found, qerr *err)
{
    enum { ASK = 8 };
    cublasLtMatmulPreference_t pref;
    *found = 0;
    if (!lt_ok(cublasLtMatmulPreferenceCreate(&pref), "cublasLtMatmulPreferenceCreate", err))
        return false;
    const lt_key *k = &e->key;
    bool ok = set_pref(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, limit, err) &&
              set_pref(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, k->align_a, err) &&
              set_pref(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, k->align_b, err) &&
              set_pref(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, k->align_c, err) &&
              set_pref(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, k->align_c, err);
    if (ok) {
        cublasLtMatmulHeuristicResult_t r[ASK];
        int n = 0;
        cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(lt->h, op, e->la, e->lb, e->lc, e->lc,
                                                           pref, ASK, r, &n);
        if (st != CUBLAS_STATUS_NOT_SUPPORTED && !lt_ok(st, "cublasLtMatmulAlgoGetHeuristic", err))
            ok = false;
        for (int i = 0; ok && st == CUBLAS_STATUS_SUCCESS && i < n && !*found; i++)
            if (r[i].state == CUBLAS_STATUS_SUCCESS && r[i].workspaceSize == 0) {
                e->algo = r[i].algo;
                *found = 1;
            }
    }
    cublasLtMatmulPreferenceDestroy(pref);
    return ok;
}

/* Fill e for key k: the layouts and the algorithm (e->declined when there
 * is none that needs no workspace). */
static bool entry_fill(blas_lt *lt, lt_entry *e, const lt_key *k, qerr *err)
{
    const bool integer = k->ab == CUDA_R_8I;
    const cublasLtMatmulDesc_t op = integer ? lt->op_int : lt->op_float;
    e->used = true;
    e->key = *k;
    if (!lt_ok(cublasLtMatrixLayoutCreate(&e->la, k->ab, k->depth, k->rows, (int64_t)k->lda),
               "cublasLtMatrixLayoutCreate", err) ||
        !lt_ok(cublasLtMatrixLayoutCreate(&e->lb, k->ab, k->depth, k->m, (int64_t)k->ldb),
               "cublasLtMatrixLayoutCreate", err) ||
        !lt_ok(cublasLtMatrixLayoutCreate(&e->lc, integer ? CUDA_R_32I : CUDA_R_32F, k->rows,
                                          k->m, (int64_t)k->ldc),
               "cublasLtMatrixLayoutCreate", err))
        return false;
    int found;
    if (!first_free_algo(lt, op, e, (uint64_t)1 << 20, &found, err) ||
        (!found && !first_free_algo(lt, op, e, 0, &found, err)))
        return false;
    e->declined = !found;
    return true;
}

static lt_entry *lookup(blas_lt *lt, const lt_key *k, qerr *err)
{
    for (int i = 0; i < LT_CACHE; i++)
        if (lt->cache[i].used && !memcmp(&lt->cache[i].key, k, sizeof *k))
            return &lt->cache[i];
    lt_entry *e = NULL;
    for (int i = 0; i < LT_CACHE && !e; i++)
        if (!lt->cache[i].used)
            e = &lt->cache[i];
    if (!e) {
        e = &lt->cache[lt->next];
        lt->next = (lt->next + 1) % LT_CACHE;
    }
    entry_clear(e);
    if (!entry_fill(lt, e, k, err)) {
        entry_clear(e);
        return NULL;
    }
    return e;
}

bool blas_lt_gemm(blas_lt *lt, cudaDataType ab, const void *A, uint64_t lda, const void *B,
                  uint64_t ldb, void *C, uint64_t ldc, uint64_t rows, uint64_t m, uint64_t depth,
                  bool accumulate, cudaStream_t stream, bool *declined, qerr *err)
{
    lt_key k;
    memset(&k, 0, sizeof k); /* compared bytewise: no stray padding */
    k.ab = ab;
    k.rows = rows, k.m = m, k.depth = depth;
    k.lda = lda, k.ldb = ldb, k.ldc = ldc;
    k.align_a = align_of(A), k.align_b = align_of(B), k.align_c = align_of(C);
    *declined = false;
    lt_entry *e = lookup(lt, &k, err);
    if (!e)
        return false;
    if (e->declined) {
        *declined = true;
        return true;
    }
    const float onef = 1.0f, zerof = 0.0f;
    const int32_t onei = 1, zeroi = 0;
    const bool integer = ab == CUDA_R_8I;
    const void *alpha = &onef, *beta = accumulate ? &onef : &zerof;
    if (integer)
        alpha = &onei, beta = &zeroi;
    return lt_ok(cublasLtMatmul(lt->h, integer ? lt->op_int : lt->op_float, alpha, A, e->la, B,
                                e->lb, beta, C, e->lc, C, e->lc, &e->algo, NULL, 0, stream),
                 "cublasLtMatmul", err);
}
