/* The Falcon family: FalconForCausalLM and the original custom-code
 * RWForCausalLM checkpoints (model_type RefinedWeb / RefinedWebModel).
 * Config keys and defaults follow transformers' FalconConfig; old key names
 * are read the way transformers' convert_custom_code_checkpoint.py renames
 * them (n_embed, n_layer, n_head, n_head_kv; n_head_kv present means the new
 * decoder architecture). Tensor names follow modeling_falcon.py. */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "families.h"
#include "qbin.h"

static bool falcon_old_form(const cJSON *cfg)
{
    return qcfg_has_architecture(cfg, "RWForCausalLM") || qcfg_model_type_is(cfg, "RefinedWeb") ||
           qcfg_model_type_is(cfg, "RefinedWebModel");
}

static bool falcon_matches(const cJSON *config)
{
    const cJSON *arch = cJSON_GetObjectItemCaseSensitive(config, "architectures");
    if (cJSON_IsArray(arch) && cJSON_GetArraySize(arch) > 0)
        return qcfg_has_architecture(config, "FalconForCausalLM") ||
               qcfg_has_architecture(config, "RWForCausalLM");
    return qcfg_model_type_is(config, "falcon") || qcfg_model_type_is(config, "RefinedWeb") ||
           qcfg_model_type_is(config, "RefinedWebModel");
}

/* The first of two spellings present; `canonical` (used in messages) when
 * neither is. */
static const char *pick(const cJSON *cfg, const char *first, const char *second,
                        const char *canonical)
{
    return qcfg_has(cfg, first) ? first : qcfg_has(cfg, second) ? second : canonical;
}

static cJSON *falcon_read_config(const cJSON *cfg, qerr *err)
{
    if (!cJSON_IsObject(cfg)) {
        qerr_set(err, QRUN_ERR_FORMAT, "config.json: not a JSON object");
        return NULL;
    }
    bool old = falcon_old_form(cfg);
    const char *arch = qcfg_has_architecture(cfg, "FalconForCausalLM") ? "FalconForCausalLM"
                       : qcfg_has_architecture(cfg, "RWForCausalLM")   ? "RWForCausalLM"
                                                                       : "FalconForCausalLM";
    /* FalconConfig: n_embed, when given, overrides hidden_size. */
    const char *k_hidden = pick(cfg, "n_embed", "hidden_size", "hidden_size");
    const char *k_layers = pick(cfg, "num_hidden_layers", "n_layer", "num_hidden_layers");
    const char *k_heads = pick(cfg, "num_attention_heads", "n_head", "num_attention_heads");
    const char *k_kv = pick(cfg, "num_kv_heads", "n_head_kv", "num_kv_heads");

    int64_t V, H, L, Hq, kv_cfg, F, max_pos, num_ln = 0;
    double eps;
    bool new_arch, mq, parallel, bias, alibi, tie;
    const char *act;
    if (!qcfg_int(cfg, "vocab_size", true, 0, 1, &V, err) ||
        !qcfg_int(cfg, k_hidden, true, 0, 1, &H, err) ||
        !qcfg_int(cfg, k_layers, true, 0, 1, &L, err) ||
        !qcfg_int(cfg, k_heads, true, 0, 1, &Hq, err) ||
        !qcfg_int(cfg, k_kv, false, Hq, 1, &kv_cfg, err) ||
        !qcfg_int(cfg, "ffn_hidden_size", false, 4 * H, 1, &F, err) ||
        !qcfg_int(cfg, "max_position_embeddings", false, 2048, 1, &max_pos, err) ||
        !qcfg_num(cfg, "layer_norm_epsilon", false, 1e-5, true, &eps, err) ||
        !qcfg_bool(cfg, "new_decoder_architecture", old && qcfg_has(cfg, "n_head_kv"), &new_arch,
                   err) ||
        !qcfg_bool(cfg, "multi_query", true, &mq, err) ||
        !qcfg_bool(cfg, "parallel_attn", true, &parallel, err) ||
        !qcfg_bool(cfg, "bias", false, &bias, err) || !qcfg_bool(cfg, "alibi", false, &alibi, err) ||
        !qcfg_bool(cfg, "tie_word_embeddings", true, &tie, err) ||
        !qcfg_str(cfg, "activation", "gelu", &act, err))
        return NULL;
    bool has_num_ln = qcfg_has(cfg, "num_ln_in_parallel_attn");
    if (has_num_ln && !qcfg_int(cfg, "num_ln_in_parallel_attn", true, 0, 1, &num_ln, err))
        return NULL;
    if (has_num_ln && num_ln > 2) {
        qerr_set(err, QRUN_ERR_FORMAT, "config.json: \"num_ln_in_parallel_attn\" must be 1 or 2");
        return NULL;
    }
    if (!has_num_ln)
        num_ln = new_arch ? 2 : 1; /* FalconDecoderLayer: None -> 2 for the new architecture */

    if (H % Hq != 0) {
        qerr_set(err, QRUN_ERR_FORMAT,
                 "config.json: \"%s\" %lld is not a multiple of \"%s\" %lld", k_hidden,
                 (long long)H, k_heads, (long long)Hq);
        return NULL;
    }
    int64_t D = H / Hq;
    if (strcmp(act, "gelu") != 0) {
        qerr_set(err, QRUN_ERR_UNSUPPORTED,
                 "config.json: \"activation\" \"%.32s\" is not supported (gelu)", act);
        return NULL;
    }
    /* Effective KV heads (FalconAttention). */
    int64_t Hkv;
    const char *qkv_layout;
    if (new_arch) {
        Hkv = kv_cfg;
        qkv_layout = "grouped";
        if (Hkv > Hq || Hq % Hkv != 0) {
            qerr_set(err, QRUN_ERR_FORMAT,
                     "config.json: \"%s\" %lld is not a multiple of \"%s\" %lld", k_heads,
                     (long long)Hq, k_kv, (long long)Hkv);
            return NULL;
        }
        if (!parallel) {
            /* transformers builds input/post_attention layer norms but the new
             * architecture's forward never uses them: such a model cannot run. */
            qerr_set(err, QRUN_ERR_UNSUPPORTED,
                     "config.json: \"new_decoder_architecture\" true with \"parallel_attn\" false "
                     "is not supported");
            return NULL;
        }
    } else if (mq) {
        Hkv = 1;
        qkv_layout = "multi_query";
    } else {
        Hkv = Hq;
        qkv_layout = "interleaved";
        if (kv_cfg != Hq) {
            qerr_set(err, QRUN_ERR_UNSUPPORTED,
                     "config.json: \"%s\" %lld differs from \"%s\" %lld without "
                     "new_decoder_architecture or multi_query (not supported by transformers)",
                     k_kv, (long long)kv_cfg, k_heads, (long long)Hq);
            return NULL;
        }
    }
    const char *norm_layout;
    if (!parallel)
        norm_layout = "sequential";
    else if (num_ln == 2) {
        if (!new_arch) {
            qerr_set(err, QRUN_ERR_UNSUPPORTED,
                     "config.json: \"num_ln_in_parallel_attn\" 2 needs new_decoder_architecture "
                     "(transformers cannot run this combination)");
            return NULL;
        }
        norm_layout = "parallel_two";
    } else
        norm_layout = "parallel_single";

    cJSON *rope;
    if (alibi) {
        rope = cJSON_CreateObject();
        if (rope && !qhp_set_str(rope, "type", "none")) {
            cJSON_Delete(rope);
            rope = NULL;
        }
        if (!rope)
            qerr_set(err, QRUN_ERR_NO_MEMORY, "config.json: out of memory");
    } else
        rope = qmodel_read_rope(cfg, max_pos, D, err);
    if (!rope)
        return NULL;
    qmodel_core core = {
        .vocab = V, .hidden = H, .layers = L, .heads = Hq, .kv_heads = Hkv, .head_dim = D,
        .ffn = F, .max_pos = max_pos, .norm_eps = eps, .norm = "layernorm",
        .norm_layout = norm_layout, .activation = "gelu", .mlp = "plain",
        .qkv_layout = qkv_layout, .tie = tie, .alibi = alibi, .attention_bias = bias,
        .mlp_bias = bias,
    };
    cJSON *hp = qmodel_new_hparams(cfg, "falcon", arch, &core, rope, err);
    if (!hp)
        return NULL;
    bool ok = qhp_set_bool(hp, "bias", bias) &&
              qhp_set_bool(hp, "parallel_attn", parallel || new_arch) &&
              qhp_set_bool(hp, "new_decoder_architecture", new_arch) &&
              qhp_set_bool(hp, "multi_query", !new_arch && mq) &&
              qhp_set_num(hp, "num_ln_in_parallel_attn", (double)num_ln);
    return ok ? hp : qmodel_hparams_oom(hp, err);
}

static bool falcon_plan(const cJSON *hp, bool has_lm_head, qmodel_plan *plan, qerr *err)
{
    qmodel_dims d;
    bool bias;
    if (!qmodel_read_dims(hp, &d, err) || !qhp_bool(hp, "bias", &bias, err))
        return false;
    const uint64_t V = d.vocab, H = d.hidden, L = d.layers, Hq = d.heads, Hkv = d.kv_heads,
                   D = d.head_dim, F = d.ffn;
    const bool tie = d.tie;
    const char *layout = qhp_str(hp, "norm_layout", err);
    if (!layout)
        return false;
    static const char *const ln_single[] = {"input_layernorm"};
    static const char *const ln_two[] = {"ln_attn", "ln_mlp"};
    static const char *const ln_seq[] = {"input_layernorm", "post_attention_layernorm"};
    const char *const *lns;
    int nln;
    if (strcmp(layout, "parallel_single") == 0)
        lns = ln_single, nln = 1;
    else if (strcmp(layout, "parallel_two") == 0)
        lns = ln_two, nln = 2;
    else if (strcmp(layout, "sequential") == 0)
        lns = ln_seq, nln = 2;
    else
        return qerr_set(err, QRUN_ERR_FORMAT, "hparams: unknown norm_layout \"%.32s\"", layout) ==
               QRUN_OK;
    if (!tie && !has_lm_head)
        return qerr_set(err, QRUN_ERR_NOT_FOUND,
                        "config.json: tie_word_embeddings is false but the checkpoint has no "
                        "lm_head.weight") == QRUN_OK;
    const uint64_t QKV = (Hq + 2 * Hkv) * D, A = Hq * D;
    QPLAN_ADD(QROLE_EMBED, 2, V, H, "transformer.word_embeddings.weight");
    for (uint64_t i = 0; i < L; i++) {
        unsigned long long l = (unsigned long long)i;
        for (int k = 0; k < nln; k++) {
            QPLAN_ADD(QROLE_NORM, 1, H, 0, "transformer.h.%llu.%s.weight", l, lns[k]);
            QPLAN_ADD(QROLE_NORM, 1, H, 0, "transformer.h.%llu.%s.bias", l, lns[k]);
        }
        QPLAN_LINEAR(bias, QKV, H, "transformer.h.%llu.self_attention.query_key_value", l);
        QPLAN_LINEAR(bias, H, A, "transformer.h.%llu.self_attention.dense", l);
        QPLAN_LINEAR(bias, F, H, "transformer.h.%llu.mlp.dense_h_to_4h", l);
        QPLAN_LINEAR(bias, H, F, "transformer.h.%llu.mlp.dense_4h_to_h", l);
    }
    QPLAN_ADD(QROLE_NORM, 1, H, 0, "transformer.ln_f.weight");
    QPLAN_ADD(QROLE_NORM, 1, H, 0, "transformer.ln_f.bias");
    if (!tie)
        QPLAN_ADD(QROLE_LM_HEAD, 2, V, H, "lm_head.weight");
    return true;
}

/* ---- runtime graph ---------------------------------------------------------- */

typedef enum falcon_wiring { FALCON_SEQUENTIAL, FALCON_PARALLEL_SINGLE, FALCON_PARALLEL_TWO } falcon_wiring;

typedef struct falcon_layer {
    qbk_norm ln_a, ln_m; /* ln_m: post_attention_layernorm (sequential) or ln_mlp */
    qbk_linear qkv, dense, h_to_4h, h4_to_h;
} falcon_layer;

typedef struct falcon_model {
    qmodel_sizes s;
    falcon_wiring wiring;
    qbk_qkv_layout layout;
    qrope rope;
    bool alibi;
    float *slopes; /* [n_heads] when alibi */
    falcon_layer *layers;
} falcon_model;

static void falcon_unbind(void *model)
{
    falcon_model *m = model;
    if (m) {
        free(m->slopes);
        free(m->layers);
        free(m);
    }
}

static void *falcon_bind(const qbin_file *f, const cJSON *hp, qmodel_io *io, qerr *err)
{
    falcon_model *m = calloc(1, sizeof *m);
    if (!m) {
        qerr_set(err, QRUN_ERR_NO_MEMORY, "out of memory");
        return NULL;
    }
    float eps;
    bool bias, tie;
    const char *nl, *ql;
    if (!qmodel_read_sizes(hp, &m->s, err) || !qhp_float(hp, "norm_eps", &eps, err) ||
        !qhp_bool(hp, "bias", &bias, err) || !qhp_bool(hp, "alibi", &m->alibi, err) ||
        !qhp_bool(hp, "tie_word_embeddings", &tie, err) || !qmodel_read_qrope(hp, &m->rope, err) ||
        !(nl = qhp_str(hp, "norm_layout", err)) || !(ql = qhp_str(hp, "qkv_layout", err)))
        goto fail;
    if (strcmp(nl, "sequential") == 0)
        m->wiring = FALCON_SEQUENTIAL;
    else if (strcmp(nl, "parallel_single") == 0)
        m->wiring = FALCON_PARALLEL_SINGLE;
    else if (strcmp(nl, "parallel_two") == 0)
        m->wiring = FALCON_PARALLEL_TWO;
    else {
        qerr_set(err, QRUN_ERR_FORMAT, "hparams: unknown norm_layout \"%.32s\"", nl);
        goto fail;
    }
    const int Hq = m->s.n_heads, Hkv = m->s.n_kv_heads;
    if (strcmp(ql, "grouped") == 0)
        m->layout = QBK_QKV_GROUPED;
    else if (strcmp(ql, "multi_query") == 0 && Hkv == 1)
        m->layout = QBK_QKV_MULTI_QUERY;
    else if (strcmp(ql, "interleaved") == 0 && Hkv == Hq)
        m->layout = QBK_QKV_INTERLEAVED;
    else {
        qerr_set(err, QRUN_ERR_FORMAT,
                 "hparams: qkv_layout \"%.32s\" does not fit n_heads %d / n_kv_heads %d", ql,
                 Hq, Hkv);
        goto fail;
    }
    if (m->alibi != (m->rope.p.type == QROPE_NONE)) {
        qerr_set(err, QRUN_ERR_FORMAT, "hparams: alibi and rope.type disagree");
        goto fail;
    }
    if (m->alibi) {
        m->slopes = malloc((size_t)Hq * sizeof *m->slopes);
        if (!m->slopes) {
            qerr_set(err, QRUN_ERR_NO_MEMORY, "out of memory");
            goto fail;
        }
        /* a host-side table the attention op takes; the same numbers on
         * every backend */
        cpu_alibi_slopes(Hq, m->slopes);
    }
    const uint64_t V = (uint64_t)m->s.vocab, H = (uint64_t)m->s.hidden,
                   F = (uint64_t)m->s.ffn, A = (uint64_t)Hq * (uint64_t)m->s.head_dim,
                   QKV = (uint64_t)m->s.qkv_fused;
    m->layers = calloc((size_t)m->s.n_layers, sizeof *m->layers);
    if (!m->layers) {
        qerr_set(err, QRUN_ERR_NO_MEMORY, "out of memory");
        goto fail;
    }
    if (!qmodel_bind_values(f, &io->embed, &io->embed_dt, V, H, err,
                            "transformer.word_embeddings.weight"))
        goto fail;
    const char *na = m->wiring == FALCON_PARALLEL_TWO ? "ln_attn" : "input_layernorm";
    const char *nm = m->wiring == FALCON_PARALLEL_TWO ? "ln_mlp" : "post_attention_layernorm";
    for (int i = 0; i < m->s.n_layers; i++) {
        falcon_layer *L = &m->layers[i];
        const char *pre = "transformer.h";
        if (!qmodel_bind_norm(f, &L->ln_a, QBK_LAYERNORM, eps, H, err, "%s.%d.%s", pre, i, na) ||
            (m->wiring != FALCON_PARALLEL_SINGLE &&
             !qmodel_bind_norm(f, &L->ln_m, QBK_LAYERNORM, eps, H, err, "%s.%d.%s", pre, i, nm)) ||
            !qmodel_bind_linear(f, &L->qkv, bias, QKV, H, err,
                                "%s.%d.self_attention.query_key_value", pre, i) ||
            !qmodel_bind_linear(f, &L->dense, bias, H, A, err, "%s.%d.self_attention.dense", pre,
                                i) ||
            !qmodel_bind_linear(f, &L->h_to_4h, bias, F, H, err, "%s.%d.mlp.dense_h_to_4h", pre,
                                i) ||
            !qmodel_bind_linear(f, &L->h4_to_h, bias, H, F, err, "%s.%d.mlp.dense_4h_to_h", pre,
                                i))
            goto fail;
    }
    if (!qmodel_bind_norm(f, &io->final_norm, QBK_LAYERNORM, eps, H, err, "transformer.ln_f"))
        goto fail;
    if (tie) {
        memset(&io->lm_head, 0, sizeof io->lm_head);
        io->lm_head.w.dtype = io->embed_dt;
        io->lm_head.w.rows = V;
        io->lm_head.w.cols = H;
        io->lm_head.w.data = io->embed;
    } else if (!qmodel_bind_linear(f, &io->lm_head, false, V, H, err, "lm_head"))
        goto fail;
    io->uses_xn2 = m->wiring == FALCON_PARALLEL_TWO; /* ln_mlp's output */
    io->uses_ff_b = false;
    return m;
fail:
    falcon_unbind(m);
    return NULL;
}

#define FALCON_MM(l, x, y)                                                                         \
    do {                                                                                           \
        if (!B->matmul(be, (l), (x), n, (y), err))                                                 \
            return err ? err->code : QRUN_ERR_INTERNAL;                                            \
    } while (0)
/* y = matmul(l, x), then the qbk_post's element-wise ops */
#define FALCON_MM_POST(l, x, post, y)                                                              \
    do {                                                                                           \
        if (!qbk_matmul_post(B, be, (l), (x), n, (post), (y), err))                                \
            return err ? err->code : QRUN_ERR_INTERNAL;                                            \
    } while (0)

static qrun_status falcon_forward(const void *model, const qmodel_run *r, qerr *err)
{
    const falcon_model *m = model;
    const qbackend_ops *B = r->ops;
    qbackend *be = r->be;
    const int n = r->n, Hq = m->s.n_heads, Hkv = m->s.n_kv_heads;
    if (r->layer_begin < 0 || r->layer_begin > r->layer_end || r->layer_end > m->s.n_layers)
        return qerr_set(err, QRUN_ERR_INTERNAL, "falcon: layer range [%d, %d) of %d layers",
                        r->layer_begin, r->layer_end, m->s.n_layers);
    /* the layer's last residual add (x += pending) is folded into the next
     * layer's first norm */
    const qbk_buf *pending = NULL;
    for (int i = r->layer_begin; i < r->layer_end; i++) {
        if (r->cancel && atomic_load(r->cancel))
            return qerr_set(err, QRUN_ERR_CANCELLED, "cancelled");
        const int kl = i - r->layer_begin; /* the cache holds the range's layers */
        const falcon_layer *L = &m->layers[i];
        if (pending)
            qbk_add_norm(B, be, &L->ln_a, r->x, pending, n, r->xn);
        else
            B->norm(be, &L->ln_a, r->x, n, r->xn);
        if (m->wiring == FALCON_PARALLEL_TWO)
            B->norm(be, &L->ln_m, r->x, n, r->xn2);
        if (m->wiring == FALCON_PARALLEL_SINGLE) {
            /* q/k/v and the MLP's first product read the same norm: one
             * call, so one activation quantization (int8) and one decode
             * GEMV launch; ff_a is not touched until the MLP below */
            const qbk_linear *w2[2] = {&L->qkv, &L->h_to_4h};
            qbk_buf *y2[2] = {r->qkv, r->ff_a};
            const qbk_post p2[2] = {{0}, {.gelu = true}};
            if (!qbk_matmul_multi(B, be, w2, 2, r->xn, n, p2, y2, err))
                return err ? err->code : QRUN_ERR_INTERNAL;
        } else {
            FALCON_MM(&L->qkv, r->xn, r->qkv);
        }
        B->qkv_split(be, m->layout, r->qkv, n, Hq, Hkv, m->s.head_dim, r->q, r->k, r->v);
        if (!m->alibi)
            qbk_rope_store(B, be, &m->rope, r->seq_len, r->q, r->k, r->v, n, Hq, Hkv, r->p0,
                           r->kv, kl);
        else
            B->kv_store(be, r->kv, kl, r->p0, n, r->k, r->v);
        B->attention(be, r->kv, kl, r->q, n, r->p0, Hq, m->slopes, r->attn);
        FALCON_MM(&L->dense, r->attn, r->tmp);
        if (m->wiring == FALCON_SEQUENTIAL) {
            /* h = x + attn; y = h + mlp(post_attention_layernorm(h)) */
            qbk_add_norm(B, be, &L->ln_m, r->x, r->tmp, n, r->xn);
            FALCON_MM_POST(&L->h_to_4h, r->xn, ((qbk_post){.gelu = true}), r->ff_a);
            FALCON_MM(&L->h4_to_h, r->ff_a, r->tmp);
            pending = r->tmp;
        } else {
            /* transformers: mlp_output += attention_output; out = mlp_output + residual */
            if (m->wiring == FALCON_PARALLEL_TWO) /* (single: gelu'd with q/k/v above) */
                FALCON_MM_POST(&L->h_to_4h, r->xn2, ((qbk_post){.gelu = true}), r->ff_a);
            FALCON_MM_POST(&L->h4_to_h, r->ff_a, ((qbk_post){.add = r->tmp}), r->xn);
            pending = r->xn;
        }
    }
    if (pending)
        B->add(be, r->x, pending, n, r->x);
    return QRUN_OK;
}

const qmodel_family qmodel_falcon = {
    .name = "falcon",
    .matches = falcon_matches,
    .read_config = falcon_read_config,
    .plan = falcon_plan,
    .bind = falcon_bind,
    .unbind = falcon_unbind,
    .forward = falcon_forward,
};
