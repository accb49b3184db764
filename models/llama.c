/* The Llama family: LlamaForCausalLM (Llama 1/2/3, TinyLlama, SmolLM2) and
 * MistralForCausalLM without a sliding window. Config keys and defaults
 * follow transformers' LlamaConfig / MistralConfig; tensor names follow
 * modeling_llama.py. */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "families.h"
#include "qbin.h"

static bool llama_matches(const cJSON *config)
{
    const cJSON *arch = cJSON_GetObjectItemCaseSensitive(config, "architectures");
    if (cJSON_IsArray(arch) && cJSON_GetArraySize(arch) > 0)
        return qcfg_has_architecture(config, "LlamaForCausalLM") ||
               qcfg_has_architecture(config, "MistralForCausalLM");
    return qcfg_model_type_is(config, "llama") || qcfg_model_type_is(config, "mistral");
}

static cJSON *llama_read_config(const cJSON *cfg, qerr *err)
{
    if (!cJSON_IsObject(cfg)) {
        qerr_set(err, QRUN_ERR_FORMAT, "config.json: not a JSON object");
        return NULL;
    }
    bool mistral = !qcfg_has_architecture(cfg, "LlamaForCausalLM") &&
                   (qcfg_has_architecture(cfg, "MistralForCausalLM") ||
                    qcfg_model_type_is(cfg, "mistral"));
    const char *arch = mistral ? "MistralForCausalLM" : "LlamaForCausalLM";

    if (mistral) {
        /* MistralConfig defaults sliding_window to 4096: only an explicit null
         * means full attention, which is what this family computes. */
        const cJSON *sw = cJSON_GetObjectItemCaseSensitive(cfg, "sliding_window");
        if (!cJSON_IsNull(sw)) {
            qerr_set(err, QRUN_ERR_UNSUPPORTED,
                     "config.json: MistralForCausalLM with \"sliding_window\" %s is not supported "
                     "(only sliding_window null)",
                     sw ? "set" : "absent (default 4096)");
            return NULL;
        }
    }

    int64_t V, H, F, L, Hq, Hkv, D, max_pos;
    double eps;
    bool tie, attn_bias, mlp_bias;
    const char *act;
    if (!qcfg_int(cfg, "vocab_size", true, 0, 1, &V, err) ||
        !qcfg_int(cfg, "hidden_size", true, 0, 1, &H, err) ||
        !qcfg_int(cfg, "intermediate_size", true, 0, 1, &F, err) ||
        !qcfg_int(cfg, "num_hidden_layers", true, 0, 1, &L, err) ||
        !qcfg_int(cfg, "num_attention_heads", true, 0, 1, &Hq, err))
        return NULL;
    if (!qcfg_int(cfg, "num_key_value_heads", false, mistral ? 8 : Hq, 1, &Hkv, err))
        return NULL;
    if (!qcfg_has(cfg, "head_dim") && H % Hq != 0) {
        qerr_set(err, QRUN_ERR_FORMAT,
                 "config.json: \"hidden_size\" %lld is not a multiple of \"num_attention_heads\" "
                 "%lld (and no \"head_dim\" is given)",
                 (long long)H, (long long)Hq);
        return NULL;
    }
    if (!qcfg_int(cfg, "head_dim", false, H / Hq, 1, &D, err) ||
        !qcfg_int(cfg, "max_position_embeddings", false, mistral ? 131072 : 2048, 1, &max_pos,
                  err) ||
        !qcfg_num(cfg, "rms_norm_eps", false, 1e-6, true, &eps, err) ||
        !qcfg_bool(cfg, "tie_word_embeddings", false, &tie, err) ||
        !qcfg_bool(cfg, "attention_bias", false, &attn_bias, err) ||
        !qcfg_bool(cfg, "mlp_bias", false, &mlp_bias, err) ||
        !qcfg_str(cfg, "hidden_act", "silu", &act, err))
        return NULL;
    if (Hkv > Hq || Hq % Hkv != 0) {
        qerr_set(err, QRUN_ERR_FORMAT,
                 "config.json: \"num_attention_heads\" %lld is not a multiple of "
                 "\"num_key_value_heads\" %lld",
                 (long long)Hq, (long long)Hkv);
        return NULL;
    }
    if (strcmp(act, "silu") != 0 && strcmp(act, "swish") != 0) {
        qerr_set(err, QRUN_ERR_UNSUPPORTED,
                 "config.json: \"hidden_act\" \"%.32s\" is not supported (silu)", act);
        return NULL;
    }
    if (mistral) /* MistralAttention / MistralMLP have no biases */
        attn_bias = mlp_bias = false;

    cJSON *rope = qmodel_read_rope(cfg, max_pos, D, err);
    if (!rope)
        return NULL;
    qmodel_core core = {
        .vocab = V, .hidden = H, .layers = L, .heads = Hq, .kv_heads = Hkv, .head_dim = D,
        .ffn = F, .max_pos = max_pos, .norm_eps = eps, .norm = "rmsnorm",
        .norm_layout = "sequential", .activation = "silu", .mlp = "gated",
        .qkv_layout = "separate", .tie = tie, .alibi = false, .attention_bias = attn_bias,
        .mlp_bias = mlp_bias,
    };
    return qmodel_new_hparams(cfg, "llama", arch, &core, rope, err);
}

static bool llama_plan(const cJSON *hp, bool has_lm_head, qmodel_plan *plan, qerr *err)
{
    qmodel_dims d;
    bool ab, mb;
    if (!qmodel_read_dims(hp, &d, err) || !qhp_bool(hp, "attention_bias", &ab, err) ||
        !qhp_bool(hp, "mlp_bias", &mb, err))
        return false;
    const uint64_t V = d.vocab, H = d.hidden, L = d.layers, Hq = d.heads, Hkv = d.kv_heads,
                   D = d.head_dim, F = d.ffn;
    const bool tie = d.tie;
    if (!tie && !has_lm_head)
        return qerr_set(err, QRUN_ERR_NOT_FOUND,
                        "config.json: tie_word_embeddings is false but the checkpoint has no "
                        "lm_head.weight") == QRUN_OK;
    const uint64_t Q = Hq * D, KV = Hkv * D;
    QPLAN_ADD(QROLE_EMBED, 2, V, H, "model.embed_tokens.weight");
    for (uint64_t i = 0; i < L; i++) {
        unsigned long long l = (unsigned long long)i;
        QPLAN_ADD(QROLE_NORM, 1, H, 0, "model.layers.%llu.input_layernorm.weight", l);
        static const char *const qkv[3] = {"q_proj", "k_proj", "v_proj"};
        for (int k = 0; k < 3; k++) {
            uint64_t rows = k == 0 ? Q : KV;
            QPLAN_LINEAR(ab, rows, H, "model.layers.%llu.self_attn.%s", l, qkv[k]);
        }
        QPLAN_LINEAR(ab, H, Q, "model.layers.%llu.self_attn.o_proj", l);
        QPLAN_ADD(QROLE_NORM, 1, H, 0, "model.layers.%llu.post_attention_layernorm.weight", l);
        QPLAN_LINEAR(mb, F, H, "model.layers.%llu.mlp.gate_proj", l);
        QPLAN_LINEAR(mb, F, H, "model.layers.%llu.mlp.up_proj", l);
        QPLAN_LINEAR(mb, H, F, "model.layers.%llu.mlp.down_proj", l);
    }
    QPLAN_ADD(QROLE_NORM, 1, H, 0, "model.norm.weight");
    if (!tie)
        QPLAN_ADD(QROLE_LM_HEAD, 2, V, H, "lm_head.weight");
    return true;
}

/* ---- runtime graph ---------------------------------------------------------- */

typedef struct llama_layer {
    qbk_norm ln1, ln2;
    qbk_linear q, k, v, o, gate, up, down;
} llama_layer;

typedef struct llama_model {
    qmodel_sizes s;
    qrope rope;
    llama_layer *layers;
} llama_model;

static void llama_unbind(void *model)
{
    llama_model *m = model;
    if (m) {
        free(m->layers);
        free(m);
    }
}

static void *llama_bind(const qbin_file *f, const cJSON *hp, qmodel_io *io, qerr *err)
{
    llama_model *m = calloc(1, sizeof *m);
    if (!m) {
        qerr_set(err, QRUN_ERR_NO_MEMORY, "out of memory");
        return NULL;
    }
    float eps;
    bool ab, mb, tie;
    if (!qmodel_read_sizes(hp, &m->s, err) || !qhp_float(hp, "norm_eps", &eps, err) ||
        !qhp_bool(hp, "attention_bias", &ab, err) || !qhp_bool(hp, "mlp_bias", &mb, err) ||
        !qhp_bool(hp, "tie_word_embeddings", &tie, err) || !qmodel_read_qrope(hp, &m->rope, err))
        goto fail;
    if (m->rope.p.type == QROPE_NONE) {
        qerr_set(err, QRUN_ERR_FORMAT, "hparams: llama models need rotary embeddings");
        goto fail;
    }
    const uint64_t V = (uint64_t)m->s.vocab, H = (uint64_t)m->s.hidden,
                   F = (uint64_t)m->s.ffn, Q = (uint64_t)m->s.n_heads * (uint64_t)m->s.head_dim,
                   KV = (uint64_t)m->s.n_kv_heads * (uint64_t)m->s.head_dim;
    m->layers = calloc((size_t)m->s.n_layers, sizeof *m->layers);
    if (!m->layers) {
        qerr_set(err, QRUN_ERR_NO_MEMORY, "out of memory");
        goto fail;
    }
    if (!qmodel_bind_values(f, &io->embed, &io->embed_dt, V, H, err, "model.embed_tokens.weight"))
        goto fail;
    for (int i = 0; i < m->s.n_layers; i++) {
        llama_layer *L = &m->layers[i];
        const char *pre = "model.layers";
        if (!qmodel_bind_norm(f, &L->ln1, QBK_RMSNORM, eps, H, err, "%s.%d.input_layernorm", pre,
                              i) ||
            !qmodel_bind_norm(f, &L->ln2, QBK_RMSNORM, eps, H, err,
                              "%s.%d.post_attention_layernorm", pre, i) ||
            !qmodel_bind_linear(f, &L->q, ab, Q, H, err, "%s.%d.self_attn.q_proj", pre, i) ||
            !qmodel_bind_linear(f, &L->k, ab, KV, H, err, "%s.%d.self_attn.k_proj", pre, i) ||
            !qmodel_bind_linear(f, &L->v, ab, KV, H, err, "%s.%d.self_attn.v_proj", pre, i) ||
            !qmodel_bind_linear(f, &L->o, ab, H, Q, err, "%s.%d.self_attn.o_proj", pre, i) ||
            !qmodel_bind_linear(f, &L->gate, mb, F, H, err, "%s.%d.mlp.gate_proj", pre, i) ||
            !qmodel_bind_linear(f, &L->up, mb, F, H, err, "%s.%d.mlp.up_proj", pre, i) ||
            !qmodel_bind_linear(f, &L->down, mb, H, F, err, "%s.%d.mlp.down_proj", pre, i))
            goto fail;
    }
    if (!qmodel_bind_norm(f, &io->final_norm, QBK_RMSNORM, eps, H, err, "model.norm"))
        goto fail;
    if (tie) {
        /* transformers ties lm_head to the embedding: the table is the weight */
        memset(&io->lm_head, 0, sizeof io->lm_head);
        io->lm_head.w.dtype = io->embed_dt;
        io->lm_head.w.rows = V;
        io->lm_head.w.cols = H;
        io->lm_head.w.data = io->embed;
    } else if (!qmodel_bind_linear(f, &io->lm_head, false, V, H, err, "lm_head"))
        goto fail;
    io->uses_xn2 = false;
    io->uses_ff_b = true; /* gate and up */
    return m;
fail:
    llama_unbind(m);
    return NULL;
}

static qrun_status llama_forward(const void *model, const qmodel_run *r, qerr *err)
{
    const llama_model *m = model;
    const qbackend_ops *B = r->ops;
    qbackend *be = r->be;
    const int n = r->n, Hq = m->s.n_heads, Hkv = m->s.n_kv_heads;
    if (r->layer_begin < 0 || r->layer_begin > r->layer_end || r->layer_end > m->s.n_layers)
        return qerr_set(err, QRUN_ERR_INTERNAL, "llama: layer range [%d, %d) of %d layers",
                        r->layer_begin, r->layer_end, m->s.n_layers);
    /* the MLP's residual add is folded into the next layer's first norm */
    bool pending_add = false;
    for (int i = r->layer_begin; i < r->layer_end; i++) {
        if (r->cancel && atomic_load(r->cancel))
            return qerr_set(err, QRUN_ERR_CANCELLED, "cancelled");
        const int kl = i - r->layer_begin; /* the cache holds the range's layers */
        const llama_layer *L = &m->layers[i];
        /* h = x + o_proj(attn(rmsnorm1(x))) */
        if (pending_add)
            qbk_add_norm(B, be, &L->ln1, r->x, r->tmp, n, r->xn);
        else
            B->norm(be, &L->ln1, r->x, n, r->xn);
        const qbk_linear *qkv_w[3] = {&L->q, &L->k, &L->v};
        qbk_buf *qkv_y[3] = {r->q, r->k, r->v};
        if (!qbk_matmul_multi(B, be, qkv_w, 3, r->xn, n, NULL, qkv_y, err))
            return err ? err->code : QRUN_ERR_INTERNAL;
        qbk_rope_store(B, be, &m->rope, r->seq_len, r->q, r->k, r->v, n, Hq, Hkv, r->p0, r->kv,
                       kl);
        B->attention(be, r->kv, kl, r->q, n, r->p0, Hq, NULL, r->attn);
        if (!B->matmul(be, &L->o, r->attn, n, r->tmp, err))
            return err ? err->code : QRUN_ERR_INTERNAL;
        /* y = h + down(silu(gate(n2(h))) * up(n2(h))) */
        qbk_add_norm(B, be, &L->ln2, r->x, r->tmp, n, r->xn);
        const qbk_linear *gu_w[2] = {&L->gate, &L->up};
        qbk_buf *gu_y[2] = {r->ff_a, r->ff_b};
        if (!qbk_matmul_multi(B, be, gu_w, 2, r->xn, n, NULL, gu_y, err))
            return err ? err->code : QRUN_ERR_INTERNAL;
        B->swiglu(be, r->ff_a, r->ff_b, n, r->ff_a);
        if (!B->matmul(be, &L->down, r->ff_a, n, r->tmp, err))
            return err ? err->code : QRUN_ERR_INTERNAL;
        pending_add = true;
    }
    if (pending_add)
        B->add(be, r->x, r->tmp, n, r->x);
    return QRUN_OK;
}

const qmodel_family qmodel_llama = {
    .name = "llama",
    .matches = llama_matches,
    .read_config = llama_read_config,
    .plan = llama_plan,
    .bind = llama_bind,
    .unbind = llama_unbind,
    .forward = llama_forward,
};
