/* Model families: config.json → hparams for every variant (both config
 * forms), tensor plans (names, shapes, roles), error messages, and the
 * checkpoint-against-plan check (synthetic checkpoints plus the tiny Hugging
 * Face checkpoints in tests/data/tiny/ when present). */
#include <cjson/cJSON.h>
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "import/hf_checkpoint.h"
#include "registry.h"
#include "testutil.h"

#define ASSERT_HAS(msg, sub)                                                                       \
    do {                                                                                           \
        const char *m_ = (msg);                                                                    \
        ck_assert_msg(m_ != NULL, "expected an error containing \"%s\", got success", (sub));      \
        ck_assert_msg(strstr(m_, (sub)) != NULL, "error \"%s\" lacks \"%s\"", m_, (sub));          \
    } while (0)

typedef struct parsed {
    cJSON *config;
    const qmodel_family *fam;
    cJSON *hp;
    qerr err;
} parsed;

static parsed parse(const char *json)
{
    parsed p = {0};
    p.config = cJSON_Parse(json);
    ck_assert_msg(p.config != NULL, "test JSON does not parse: %s", json);
    p.fam = qmodel_family_for_config(p.config, &p.err);
    if (p.fam)
        p.hp = p.fam->read_config(p.config, &p.err);
    return p;
}

static void parsed_free(parsed *p)
{
    cJSON_Delete(p->config);
    cJSON_Delete(p->hp);
}

/* Parse and require success. */
static parsed ok(const char *json)
{
    parsed p = parse(json);
    ck_assert_msg(p.fam != NULL && p.hp != NULL, "config rejected: %s", p.err.msg);
    return p;
}

/* Parse and require failure; returns the message (static). */
static const char *fails(const char *json)
{
    static char msg[QERR_MSG_MAX];
    parsed p = parse(json);
    bool failed = p.hp == NULL;
    snprintf(msg, sizeof msg, "%s", p.err.msg);
    if (!failed) {
        char *s = cJSON_PrintUnformatted(p.hp);
        snprintf(msg, sizeof msg, "unexpected success: %s", s);
        free(s);
    }
    parsed_free(&p);
    ck_assert_msg(failed, "%s", msg);
    ck_assert_int_ne(p.err.code, QRUN_OK);
    return msg;
}

static double num(const cJSON *hp, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(hp, key);
    ck_assert_msg(cJSON_IsNumber(v), "hparams.%s missing or not a number", key);
    return v->valuedouble;
}

static bool flag(const cJSON *hp, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(hp, key);
    ck_assert_msg(cJSON_IsBool(v), "hparams.%s missing or not a boolean", key);
    return cJSON_IsTrue(v);
}

static const char *str(const cJSON *hp, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(hp, key);
    ck_assert_msg(cJSON_IsString(v), "hparams.%s missing or not a string", key);
    return v->valuestring;
}

static const cJSON *rope(const cJSON *hp)
{
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(hp, "rope");
    ck_assert_msg(cJSON_IsObject(r), "hparams.rope missing");
    return r;
}

static qmodel_plan make_plan(const parsed *p, bool has_lm_head)
{
    qmodel_plan plan = {0};
    qerr err;
    qerr_clear(&err);
    ck_assert_msg(p->fam->plan(p->hp, has_lm_head, &plan, &err), "plan failed: %s", err.msg);
    return plan;
}

static void expect_tensor(const qmodel_plan *plan, const char *name, qmodel_role role, int ndim,
                          uint64_t d0, uint64_t d1)
{
    const qmodel_tensor *t = qmodel_plan_find(plan, name);
    ck_assert_msg(t != NULL, "plan lacks %s", name);
    ck_assert_msg(t->role == role, "%s: role %d, want %d", name, (int)t->role, (int)role);
    ck_assert_msg(t->ndim == ndim, "%s: ndim %d, want %d", name, t->ndim, ndim);
    ck_assert_msg(t->shape[0] == d0, "%s: shape[0] %llu, want %llu", name,
                  (unsigned long long)t->shape[0], (unsigned long long)d0);
    if (ndim == 2)
        ck_assert_msg(t->shape[1] == d1, "%s: shape[1] %llu, want %llu", name,
                      (unsigned long long)t->shape[1], (unsigned long long)d1);
}

static void expect_absent(const qmodel_plan *plan, const char *name)
{
    ck_assert_msg(qmodel_plan_find(plan, name) == NULL, "plan unexpectedly has %s", name);
}

static void expect_unique_names(const qmodel_plan *plan)
{
    for (int i = 0; i < plan->count; i++)
        for (int j = i + 1; j < plan->count; j++)
            ck_assert_msg(strcmp(plan->tensors[i].name, plan->tensors[j].name) != 0,
                          "duplicate %s", plan->tensors[i].name);
}

/* ---- Llama ---------------------------------------------------------------------- */

START_TEST(llama_mha_untied)
{
    parsed p = ok("{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\","
                  " \"vocab_size\": 100, \"hidden_size\": 64, \"intermediate_size\": 96,"
                  " \"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"rms_norm_eps\": 1e-5,"
                  " \"max_position_embeddings\": 512, \"torch_dtype\": \"float16\","
                  " \"bos_token_id\": 1, \"eos_token_id\": 2}");
    ck_assert_str_eq(p.fam->name, "llama");
    ck_assert_ptr_eq(qmodel_family_by_name("llama"), p.fam);
    ck_assert_str_eq(str(p.hp, "architecture"), "llama");
    ck_assert_str_eq(str(p.hp, "source_architecture"), "LlamaForCausalLM");
    ck_assert_str_eq(str(p.hp, "source_dtype"), "float16");
    ck_assert_str_eq(qmodel_config_dtype(p.config), "float16");
    ck_assert_double_eq(num(p.hp, "vocab_size"), 100);
    ck_assert_double_eq(num(p.hp, "hidden_size"), 64);
    ck_assert_double_eq(num(p.hp, "n_layers"), 2);
    ck_assert_double_eq(num(p.hp, "n_heads"), 4);
    ck_assert_double_eq(num(p.hp, "n_kv_heads"), 4); /* default: MHA */
    ck_assert_double_eq(num(p.hp, "head_dim"), 16);  /* default: H / Hq */
    ck_assert_double_eq(num(p.hp, "ffn_hidden_size"), 96);
    ck_assert_double_eq(num(p.hp, "max_position_embeddings"), 512);
    ck_assert_double_eq(num(p.hp, "norm_eps"), 1e-5);
    ck_assert_double_eq(num(p.hp, "bos_token_id"), 1);
    ck_assert_double_eq(num(p.hp, "eos_token_id"), 2);
    ck_assert_str_eq(str(p.hp, "norm"), "rmsnorm");
    ck_assert_str_eq(str(p.hp, "norm_layout"), "sequential");
    ck_assert_str_eq(str(p.hp, "activation"), "silu");
    ck_assert_str_eq(str(p.hp, "qkv_layout"), "separate");
    ck_assert(!flag(p.hp, "tie_word_embeddings")); /* Llama default: untied */
    ck_assert(!flag(p.hp, "attention_bias"));
    ck_assert(!flag(p.hp, "mlp_bias"));
    ck_assert(!flag(p.hp, "alibi"));
    ck_assert_str_eq(str(rope(p.hp), "type"), "default");
    ck_assert_double_eq(num(rope(p.hp), "theta"), 10000.0);

    qmodel_plan plan = make_plan(&p, true);
    ck_assert_int_eq(plan.count, 1 + 2 * 9 + 1 + 1);
    expect_unique_names(&plan);
    expect_tensor(&plan, "model.embed_tokens.weight", QROLE_EMBED, 2, 100, 64);
    expect_tensor(&plan, "model.layers.0.input_layernorm.weight", QROLE_NORM, 1, 64, 0);
    expect_tensor(&plan, "model.layers.1.self_attn.q_proj.weight", QROLE_LINEAR, 2, 64, 64);
    expect_tensor(&plan, "model.layers.1.self_attn.k_proj.weight", QROLE_LINEAR, 2, 64, 64);
    expect_tensor(&plan, "model.layers.1.self_attn.v_proj.weight", QROLE_LINEAR, 2, 64, 64);
    expect_tensor(&plan, "model.layers.1.self_attn.o_proj.weight", QROLE_LINEAR, 2, 64, 64);
    expect_tensor(&plan, "model.layers.1.post_attention_layernorm.weight", QROLE_NORM, 1, 64, 0);
    expect_tensor(&plan, "model.layers.0.mlp.gate_proj.weight", QROLE_LINEAR, 2, 96, 64);
    expect_tensor(&plan, "model.layers.0.mlp.up_proj.weight", QROLE_LINEAR, 2, 96, 64);
    expect_tensor(&plan, "model.layers.0.mlp.down_proj.weight", QROLE_LINEAR, 2, 64, 96);
    expect_tensor(&plan, "model.norm.weight", QROLE_NORM, 1, 64, 0);
    expect_tensor(&plan, "lm_head.weight", QROLE_LM_HEAD, 2, 100, 64);
    expect_absent(&plan, "model.layers.2.input_layernorm.weight");
    expect_absent(&plan, "model.layers.0.self_attn.q_proj.bias");
    qmodel_plan_free(&plan);

    /* untied but the checkpoint has no lm_head */
    qerr err;
    qerr_clear(&err);
    ck_assert(!p.fam->plan(p.hp, false, &plan, &err));
    ASSERT_HAS(err.msg, "lm_head.weight");
    ASSERT_HAS(err.msg, "tie_word_embeddings");
    qmodel_plan_free(&plan);
    parsed_free(&p);
}
END_TEST

START_TEST(llama_gqa_head_dim_tied_bias)
{
    /* GQA + explicit head_dim (Hq*D != H) + tied + biases, transformers-5 form */
    parsed p = ok("{\"architectures\": [\"LlamaForCausalLM\"], \"vocab_size\": 50,"
                  " \"hidden_size\": 48, \"intermediate_size\": 80, \"num_hidden_layers\": 1,"
                  " \"num_attention_heads\": 4, \"num_key_value_heads\": 2, \"head_dim\": 32,"
                  " \"tie_word_embeddings\": true, \"attention_bias\": true, \"mlp_bias\": true,"
                  " \"dtype\": \"bfloat16\", \"eos_token_id\": [7, 8],"
                  " \"rope_parameters\": {\"rope_theta\": 500000.0, \"rope_type\": \"default\"}}");
    ck_assert_double_eq(num(p.hp, "n_kv_heads"), 2);
    ck_assert_double_eq(num(p.hp, "head_dim"), 32);
    ck_assert(flag(p.hp, "tie_word_embeddings"));
    ck_assert(flag(p.hp, "attention_bias"));
    ck_assert(flag(p.hp, "mlp_bias"));
    ck_assert_str_eq(str(p.hp, "source_dtype"), "bfloat16");
    ck_assert_str_eq(qmodel_config_dtype(p.config), "bfloat16");
    ck_assert_double_eq(num(p.hp, "max_position_embeddings"), 2048);
    ck_assert_double_eq(num(p.hp, "norm_eps"), 1e-6);
    ck_assert(cJSON_IsArray(cJSON_GetObjectItem(p.hp, "eos_token_id")));
    ck_assert(cJSON_GetObjectItem(p.hp, "bos_token_id") == NULL);
    ck_assert_double_eq(num(rope(p.hp), "theta"), 500000.0);

    qmodel_plan plan = make_plan(&p, false);
    expect_unique_names(&plan);
    expect_tensor(&plan, "model.layers.0.self_attn.q_proj.weight", QROLE_LINEAR, 2, 128, 48);
    expect_tensor(&plan, "model.layers.0.self_attn.q_proj.bias", QROLE_BIAS, 1, 128, 0);
    expect_tensor(&plan, "model.layers.0.self_attn.k_proj.weight", QROLE_LINEAR, 2, 64, 48);
    expect_tensor(&plan, "model.layers.0.self_attn.k_proj.bias", QROLE_BIAS, 1, 64, 0);
    expect_tensor(&plan, "model.layers.0.self_attn.v_proj.weight", QROLE_LINEAR, 2, 64, 48);
    expect_tensor(&plan, "model.layers.0.self_attn.v_proj.bias", QROLE_BIAS, 1, 64, 0);
    expect_tensor(&plan, "model.layers.0.self_attn.o_proj.weight", QROLE_LINEAR, 2, 48, 128);
    expect_tensor(&plan, "model.layers.0.self_attn.o_proj.bias", QROLE_BIAS, 1, 48, 0);
    expect_tensor(&plan, "model.layers.0.mlp.gate_proj.bias", QROLE_BIAS, 1, 80, 0);
    expect_tensor(&plan, "model.layers.0.mlp.up_proj.bias", QROLE_BIAS, 1, 80, 0);
    expect_tensor(&plan, "model.layers.0.mlp.down_proj.bias", QROLE_BIAS, 1, 48, 0);
    expect_absent(&plan, "lm_head.weight");
    ck_assert_int_eq(plan.count, 1 + 9 + 7 + 1);
    qmodel_plan_free(&plan);
    /* tied: a stored lm_head is ignored, as transformers ties it to the embedding */
    plan = make_plan(&p, true);
    expect_absent(&plan, "lm_head.weight");
    qmodel_plan_free(&plan);
    parsed_free(&p);
}
END_TEST

static const char *llama_base =
    "\"architectures\": [\"LlamaForCausalLM\"], \"vocab_size\": 32, \"hidden_size\": 64,"
    " \"intermediate_size\": 128, \"num_hidden_layers\": 1, \"num_attention_heads\": 4,"
    " \"max_position_embeddings\": 4096";

static parsed llama_with(const char *extra)
{
    char buf[2048];
    snprintf(buf, sizeof buf, "{%s%s%s}", llama_base, *extra ? ", " : "", extra);
    return ok(buf);
}

static const char *llama_fails(const char *extra)
{
    char buf[2048];
    snprintf(buf, sizeof buf, "{%s%s%s}", llama_base, *extra ? ", " : "", extra);
    return fails(buf);
}

/* The same rope settings written in the old and the transformers-5 form must
 * give identical rope objects. */
static void rope_forms(const char *old_form, const char *new_form, const char *type, double theta,
                       double factor)
{
    parsed a = llama_with(old_form), b = llama_with(new_form);
    const cJSON *ra = rope(a.hp), *rb = rope(b.hp);
    char *sa = cJSON_PrintUnformatted(ra), *sb = cJSON_PrintUnformatted(rb);
    ck_assert_msg(cJSON_Compare(ra, rb, 1), "old form %s != new form %s", sa, sb);
    free(sa);
    free(sb);
    ck_assert_str_eq(str(ra, "type"), type);
    ck_assert_double_eq(num(ra, "theta"), theta);
    if (factor > 0)
        ck_assert_double_eq(num(ra, "factor"), factor);
    parsed_free(&a);
    parsed_free(&b);
}

START_TEST(llama_rope_both_forms)
{
    rope_forms("\"rope_theta\": 20000, \"rope_scaling\": {\"type\": \"linear\", \"factor\": 4.0}",
               "\"rope_parameters\": {\"rope_type\": \"linear\", \"factor\": 4.0, \"rope_theta\": "
               "20000}",
               "linear", 20000, 4.0);
    rope_forms("\"rope_scaling\": {\"rope_type\": \"dynamic\", \"factor\": 2.0}",
               "\"rope_parameters\": {\"rope_type\": \"dynamic\", \"factor\": 2.0}", "dynamic",
               10000, 2.0);
    rope_forms("\"rope_theta\": 500000.0, \"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": "
               "8.0, \"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0, "
               "\"original_max_position_embeddings\": 8192}",
               "\"rope_parameters\": {\"rope_type\": \"llama3\", \"rope_theta\": 500000.0, "
               "\"factor\": 8.0, \"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0, "
               "\"original_max_position_embeddings\": 8192}, \"dtype\": \"bfloat16\"",
               "llama3", 500000, 8.0);
    rope_forms("\"rope_theta\": 1234.5, \"rope_scaling\": null",
               "\"rope_parameters\": {\"rope_type\": \"default\", \"rope_theta\": 1234.5}",
               "default", 1234.5, 0);

    /* details of each kind */
    parsed p = llama_with("\"rope_scaling\": {\"type\": \"dynamic\", \"factor\": 2.0}");
    ck_assert_double_eq(num(rope(p.hp), "original_max_position_embeddings"), 4096);
    parsed_free(&p);
    p = llama_with("\"rope_parameters\": {\"rope_type\": \"llama3\", \"factor\": 8, "
                   "\"low_freq_factor\": 1, \"high_freq_factor\": 4, "
                   "\"original_max_position_embeddings\": 8192}");
    const cJSON *r = rope(p.hp);
    ck_assert_double_eq(num(r, "low_freq_factor"), 1);
    ck_assert_double_eq(num(r, "high_freq_factor"), 4);
    ck_assert_double_eq(num(r, "original_max_position_embeddings"), 8192);
    ck_assert_double_eq(num(r, "theta"), 10000);
    parsed_free(&p);
    /* llama3 without original_max_position_embeddings: max_position_embeddings */
    p = llama_with("\"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8, "
                   "\"low_freq_factor\": 1, \"high_freq_factor\": 4}");
    ck_assert_double_eq(num(rope(p.hp), "original_max_position_embeddings"), 4096);
    parsed_free(&p);
    /* linear has no band keys */
    p = llama_with("\"rope_scaling\": {\"type\": \"linear\", \"factor\": 2}");
    ck_assert(cJSON_GetObjectItem(rope(p.hp), "low_freq_factor") == NULL);
    parsed_free(&p);
    /* the dict's rope_theta wins over the top-level one */
    p = llama_with("\"rope_theta\": 1.0, \"rope_parameters\": {\"rope_theta\": 77.0}");
    ck_assert_double_eq(num(rope(p.hp), "theta"), 77.0);
    ck_assert_str_eq(str(rope(p.hp), "type"), "default");
    parsed_free(&p);
}
END_TEST

START_TEST(llama_errors)
{
    const char *m;
    m = fails("{\"architectures\": [\"GPT2LMHeadModel\"], \"model_type\": \"gpt2\"}");
    ASSERT_HAS(m, "GPT2LMHeadModel");
    ASSERT_HAS(m, "LlamaForCausalLM");
    ASSERT_HAS(m, "FalconForCausalLM");
    ASSERT_HAS(fails("{\"vocab_size\": 3}"), "architectures");
    /* architectures wins over model_type */
    ASSERT_HAS(fails("{\"architectures\": [\"LlamaForSequenceClassification\"],"
                     " \"model_type\": \"llama\"}"),
               "LlamaForSequenceClassification");

    m = fails("{\"architectures\": [\"LlamaForCausalLM\"], \"vocab_size\": 32,"
              " \"intermediate_size\": 128, \"num_hidden_layers\": 1, \"num_attention_heads\": 4}");
    ASSERT_HAS(m, "config.json");
    ASSERT_HAS(m, "hidden_size");
    m = llama_fails("\"rope_scaling\": {\"type\": \"yarn\", \"factor\": 4.0}");
    ASSERT_HAS(m, "config.json");
    ASSERT_HAS(m, "rope_scaling.type");
    ASSERT_HAS(m, "yarn");
    m = llama_fails("\"rope_parameters\": {\"rope_type\": \"longrope\"}");
    ASSERT_HAS(m, "rope_parameters.rope_type");
    ASSERT_HAS(m, "longrope");
    m = llama_fails("\"rope_scaling\": {\"type\": \"linear\"}");
    ASSERT_HAS(m, "rope_scaling.factor");
    m = llama_fails("\"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8}");
    ASSERT_HAS(m, "low_freq_factor");
    ASSERT_HAS(llama_fails("\"rope_scaling\": {\"type\": \"linear\", \"factor\": -1}"), "factor");
    ASSERT_HAS(llama_fails("\"rope_theta\": \"big\""), "rope_theta");
    ASSERT_HAS(llama_fails("\"partial_rotary_factor\": 0.5"), "partial_rotary_factor");
    m = llama_fails("\"torch_dtype\": \"float64\"");
    ASSERT_HAS(m, "torch_dtype");
    ASSERT_HAS(m, "float64");
    ASSERT_HAS(llama_fails("\"dtype\": 16"), "dtype");
    m = llama_fails("\"num_key_value_heads\": 3");
    ASSERT_HAS(m, "num_key_value_heads");
    ASSERT_HAS(llama_fails("\"num_key_value_heads\": 0"), "num_key_value_heads");
    ASSERT_HAS(llama_fails("\"tie_word_embeddings\": \"yes\""), "tie_word_embeddings");
    ASSERT_HAS(llama_fails("\"hidden_act\": \"gelu\""), "hidden_act");
    ASSERT_HAS(llama_fails("\"rms_norm_eps\": 0"), "rms_norm_eps");
    ASSERT_HAS(llama_fails("\"eos_token_id\": -1"), "eos_token_id");
    ASSERT_HAS(llama_fails("\"head_dim\": 15"), "head_dim");
    /* H % Hq only matters when head_dim is absent */
    m = fails("{\"architectures\": [\"LlamaForCausalLM\"], \"vocab_size\": 32, \"hidden_size\": 66,"
              " \"intermediate_size\": 128, \"num_hidden_layers\": 1, \"num_attention_heads\": 4}");
    ASSERT_HAS(m, "hidden_size");
    ASSERT_HAS(m, "num_attention_heads");
    parsed p = ok("{\"architectures\": [\"LlamaForCausalLM\"], \"vocab_size\": 32,"
                  " \"hidden_size\": 66, \"intermediate_size\": 128, \"num_hidden_layers\": 1,"
                  " \"num_attention_heads\": 4, \"head_dim\": 16}");
    parsed_free(&p);
    ASSERT_HAS(fails("{\"architectures\": [\"LlamaForCausalLM\"], \"vocab_size\": 32,"
                     " \"hidden_size\": 64.5, \"intermediate_size\": 128,"
                     " \"num_hidden_layers\": 1, \"num_attention_heads\": 4}"),
               "hidden_size");
    ASSERT_HAS(fails("{\"architectures\": [\"LlamaForCausalLM\"], \"vocab_size\": 32,"
                     " \"hidden_size\": 64, \"intermediate_size\": 128,"
                     " \"num_hidden_layers\": 0, \"num_attention_heads\": 4}"),
               "num_hidden_layers");
}
END_TEST

START_TEST(mistral_and_model_type)
{
    /* model_type alone is enough when architectures is absent */
    parsed p = ok("{\"model_type\": \"llama\", \"vocab_size\": 32, \"hidden_size\": 64,"
                  " \"intermediate_size\": 128, \"num_hidden_layers\": 1,"
                  " \"num_attention_heads\": 4}");
    ck_assert_str_eq(p.fam->name, "llama");
    parsed_free(&p);
    const char *m = fails("{\"architectures\": [\"MistralForCausalLM\"], \"vocab_size\": 32,"
                          " \"hidden_size\": 64, \"intermediate_size\": 128,"
                          " \"num_hidden_layers\": 1, \"num_attention_heads\": 4,"
                          " \"sliding_window\": 4096}");
    ASSERT_HAS(m, "sliding_window");
    ASSERT_HAS(fails("{\"architectures\": [\"MistralForCausalLM\"], \"vocab_size\": 32,"
                     " \"hidden_size\": 64, \"intermediate_size\": 128,"
                     " \"num_hidden_layers\": 1, \"num_attention_heads\": 8}"),
               "sliding_window");
    p = ok("{\"architectures\": [\"MistralForCausalLM\"], \"vocab_size\": 32, \"hidden_size\": 64,"
           " \"intermediate_size\": 128, \"num_hidden_layers\": 1, \"num_attention_heads\": 16,"
           " \"sliding_window\": null, \"rope_theta\": 1000000.0}");
    ck_assert_str_eq(str(p.hp, "source_architecture"), "MistralForCausalLM");
    ck_assert_double_eq(num(p.hp, "n_kv_heads"), 8); /* MistralConfig default */
    ck_assert_double_eq(num(p.hp, "max_position_embeddings"), 131072);
    ck_assert_double_eq(num(rope(p.hp), "theta"), 1000000.0);
    parsed_free(&p);
}
END_TEST

/* ---- Falcon --------------------------------------------------------------------- */

START_TEST(falcon_7b_multi_query)
{
    parsed p = ok("{\"architectures\": [\"FalconForCausalLM\"], \"model_type\": \"falcon\","
                  " \"alibi\": false, \"bias\": false, \"hidden_size\": 64,"
                  " \"multi_query\": true, \"new_decoder_architecture\": false,"
                  " \"num_attention_heads\": 4, \"num_hidden_layers\": 2, \"parallel_attn\": true,"
                  " \"vocab_size\": 120, \"bos_token_id\": 11, \"eos_token_id\": 11,"
                  " \"layer_norm_epsilon\": 1e-05, \"torch_dtype\": \"bfloat16\"}");
    ck_assert_str_eq(p.fam->name, "falcon");
    ck_assert_ptr_eq(qmodel_family_by_name("falcon"), p.fam);
    ck_assert_str_eq(str(p.hp, "architecture"), "falcon");
    ck_assert_str_eq(str(p.hp, "source_architecture"), "FalconForCausalLM");
    ck_assert_double_eq(num(p.hp, "n_heads"), 4);
    ck_assert_double_eq(num(p.hp, "n_kv_heads"), 1);
    ck_assert_double_eq(num(p.hp, "head_dim"), 16);
    ck_assert_double_eq(num(p.hp, "ffn_hidden_size"), 256); /* default 4H */
    ck_assert_double_eq(num(p.hp, "max_position_embeddings"), 2048);
    ck_assert_double_eq(num(p.hp, "norm_eps"), 1e-5);
    ck_assert_double_eq(num(p.hp, "bos_token_id"), 11);
    ck_assert_str_eq(str(p.hp, "norm"), "layernorm");
    ck_assert_str_eq(str(p.hp, "activation"), "gelu");
    ck_assert_str_eq(str(p.hp, "qkv_layout"), "multi_query");
    ck_assert_str_eq(str(p.hp, "norm_layout"), "parallel_single");
    ck_assert(flag(p.hp, "parallel_attn"));
    ck_assert(flag(p.hp, "multi_query"));
    ck_assert(!flag(p.hp, "new_decoder_architecture"));
    ck_assert(!flag(p.hp, "bias"));
    ck_assert(!flag(p.hp, "alibi"));
    ck_assert(flag(p.hp, "tie_word_embeddings")); /* Falcon default: tied */
    ck_assert_double_eq(num(p.hp, "num_ln_in_parallel_attn"), 1);
    ck_assert_str_eq(str(rope(p.hp), "type"), "default");
    ck_assert_double_eq(num(rope(p.hp), "theta"), 10000);

    qmodel_plan plan = make_plan(&p, false);
    expect_unique_names(&plan);
    ck_assert_int_eq(plan.count, 1 + 2 * 6 + 2);
    expect_tensor(&plan, "transformer.word_embeddings.weight", QROLE_EMBED, 2, 120, 64);
    expect_tensor(&plan, "transformer.h.1.self_attention.query_key_value.weight", QROLE_LINEAR, 2,
                  (4 + 2) * 16, 64);
    expect_tensor(&plan, "transformer.h.1.self_attention.dense.weight", QROLE_LINEAR, 2, 64, 64);
    expect_tensor(&plan, "transformer.h.0.mlp.dense_h_to_4h.weight", QROLE_LINEAR, 2, 256, 64);
    expect_tensor(&plan, "transformer.h.0.mlp.dense_4h_to_h.weight", QROLE_LINEAR, 2, 64, 256);
    expect_tensor(&plan, "transformer.h.0.input_layernorm.weight", QROLE_NORM, 1, 64, 0);
    expect_tensor(&plan, "transformer.h.0.input_layernorm.bias", QROLE_NORM, 1, 64, 0);
    expect_tensor(&plan, "transformer.ln_f.weight", QROLE_NORM, 1, 64, 0);
    expect_tensor(&plan, "transformer.ln_f.bias", QROLE_NORM, 1, 64, 0);
    expect_absent(&plan, "transformer.h.0.post_attention_layernorm.weight");
    expect_absent(&plan, "transformer.h.0.ln_attn.weight");
    expect_absent(&plan, "transformer.h.0.self_attention.query_key_value.bias");
    expect_absent(&plan, "lm_head.weight");
    qmodel_plan_free(&plan);
    parsed_free(&p);

    /* untied Falcon plans lm_head */
    p = ok("{\"architectures\": [\"FalconForCausalLM\"], \"hidden_size\": 64,"
           " \"num_attention_heads\": 4, \"num_hidden_layers\": 1, \"vocab_size\": 120,"
           " \"tie_word_embeddings\": false, \"ffn_hidden_size\": 100}");
    ck_assert(flag(p.hp, "multi_query")); /* FalconConfig default */
    ck_assert(flag(p.hp, "parallel_attn"));
    plan = make_plan(&p, true);
    expect_tensor(&plan, "lm_head.weight", QROLE_LM_HEAD, 2, 120, 64);
    expect_tensor(&plan, "transformer.h.0.mlp.dense_h_to_4h.weight", QROLE_LINEAR, 2, 100, 64);
    qmodel_plan_free(&plan);
    parsed_free(&p);
}
END_TEST

START_TEST(falcon_40b_new_arch)
{
    const char *new_form =
        "{\"architectures\": [\"FalconForCausalLM\"], \"model_type\": \"falcon\","
        " \"hidden_size\": 128, \"new_decoder_architecture\": true, \"num_attention_heads\": 8,"
        " \"num_kv_heads\": 2, \"num_hidden_layers\": 2, \"parallel_attn\": true, \"bias\": false,"
        " \"alibi\": false, \"vocab_size\": 99, \"rope_theta\": 10000.0}";
    /* the original RefinedWeb config of falcon-40b (custom code) */
    const char *old_form =
        "{\"architectures\": [\"RWForCausalLM\"], \"model_type\": \"RefinedWeb\","
        " \"n_embed\": 128, \"n_head\": 8, \"n_head_kv\": 2, \"n_layer\": 2,"
        " \"parallel_attn\": true, \"bias\": false, \"alibi\": false, \"vocab_size\": 99}";
    for (int form = 0; form < 2; form++) {
        parsed p = ok(form ? old_form : new_form);
        ck_assert_str_eq(p.fam->name, "falcon");
        ck_assert_str_eq(str(p.hp, "source_architecture"),
                         form ? "RWForCausalLM" : "FalconForCausalLM");
        ck_assert(flag(p.hp, "new_decoder_architecture"));
        ck_assert(!flag(p.hp, "multi_query"));
        ck_assert(flag(p.hp, "parallel_attn"));
        ck_assert_double_eq(num(p.hp, "hidden_size"), 128);
        ck_assert_double_eq(num(p.hp, "n_layers"), 2);
        ck_assert_double_eq(num(p.hp, "n_heads"), 8);
        ck_assert_double_eq(num(p.hp, "n_kv_heads"), 2);
        ck_assert_double_eq(num(p.hp, "head_dim"), 16);
        ck_assert_double_eq(num(p.hp, "num_ln_in_parallel_attn"), 2); /* None -> 2 */
        ck_assert_str_eq(str(p.hp, "qkv_layout"), "grouped");
        ck_assert_str_eq(str(p.hp, "norm_layout"), "parallel_two");
        qmodel_plan plan = make_plan(&p, false);
        expect_unique_names(&plan);
        ck_assert_int_eq(plan.count, 1 + 2 * 8 + 2);
        expect_tensor(&plan, "transformer.h.0.self_attention.query_key_value.weight", QROLE_LINEAR,
                      2, (8 + 2 * 2) * 16, 128);
        expect_tensor(&plan, "transformer.h.1.ln_attn.weight", QROLE_NORM, 1, 128, 0);
        expect_tensor(&plan, "transformer.h.1.ln_attn.bias", QROLE_NORM, 1, 128, 0);
        expect_tensor(&plan, "transformer.h.1.ln_mlp.weight", QROLE_NORM, 1, 128, 0);
        expect_tensor(&plan, "transformer.h.1.ln_mlp.bias", QROLE_NORM, 1, 128, 0);
        expect_absent(&plan, "transformer.h.0.input_layernorm.weight");
        qmodel_plan_free(&plan);
        parsed_free(&p);
    }
    /* new architecture with one LN */
    parsed p = ok("{\"architectures\": [\"FalconForCausalLM\"], \"hidden_size\": 128,"
                  " \"new_decoder_architecture\": true, \"num_attention_heads\": 8,"
                  " \"num_kv_heads\": 8, \"num_hidden_layers\": 1, \"vocab_size\": 99,"
                  " \"num_ln_in_parallel_attn\": 1}");
    ck_assert_str_eq(str(p.hp, "norm_layout"), "parallel_single");
    ck_assert_double_eq(num(p.hp, "n_kv_heads"), 8);
    qmodel_plan plan = make_plan(&p, false);
    expect_tensor(&plan, "transformer.h.0.input_layernorm.weight", QROLE_NORM, 1, 128, 0);
    expect_tensor(&plan, "transformer.h.0.self_attention.query_key_value.weight", QROLE_LINEAR, 2,
                  3 * 128, 128);
    expect_absent(&plan, "transformer.h.0.ln_attn.weight");
    qmodel_plan_free(&plan);
    parsed_free(&p);
}
END_TEST

START_TEST(falcon_rw_alibi)
{
    /* falcon-rw-1b as first published (custom code), plus the n_embed spelling */
    const char *forms[2] = {
        "{\"alibi\": true, \"apply_residual_connection_post_layernorm\": false,"
        " \"architectures\": [\"RWForCausalLM\"], \"bias\": true, \"bos_token_id\": 1,"
        " \"eos_token_id\": 2, \"hidden_size\": 64, \"layer_norm_epsilon\": 1e-05,"
        " \"model_type\": \"RefinedWebModel\", \"multi_query\": false, \"n_head\": 4,"
        " \"n_layer\": 2, \"parallel_attn\": false, \"torch_dtype\": \"bfloat16\","
        " \"vocab_size\": 77}",
        "{\"alibi\": true, \"model_type\": \"RefinedWebModel\", \"bias\": true,"
        " \"n_embed\": 64, \"hidden_size\": 4544, \"multi_query\": false, \"n_head\": 4,"
        " \"n_layer\": 2, \"parallel_attn\": false, \"vocab_size\": 77}",
    };
    for (int f = 0; f < 2; f++) {
        parsed p = ok(forms[f]);
        ck_assert_str_eq(p.fam->name, "falcon");
        ck_assert(flag(p.hp, "alibi"));
        ck_assert_str_eq(str(rope(p.hp), "type"), "none");
        ck_assert(flag(p.hp, "bias"));
        ck_assert(flag(p.hp, "attention_bias"));
        ck_assert(flag(p.hp, "mlp_bias"));
        ck_assert(!flag(p.hp, "parallel_attn"));
        ck_assert(!flag(p.hp, "multi_query"));
        ck_assert(!flag(p.hp, "new_decoder_architecture"));
        ck_assert_double_eq(num(p.hp, "hidden_size"), 64); /* n_embed wins */
        ck_assert_double_eq(num(p.hp, "n_kv_heads"), 4);
        ck_assert_str_eq(str(p.hp, "qkv_layout"), "interleaved");
        ck_assert_str_eq(str(p.hp, "norm_layout"), "sequential");
        qmodel_plan plan = make_plan(&p, false);
        expect_unique_names(&plan);
        ck_assert_int_eq(plan.count, 1 + 2 * 12 + 2);
        expect_tensor(&plan, "transformer.h.0.self_attention.query_key_value.weight", QROLE_LINEAR,
                      2, 192, 64);
        expect_tensor(&plan, "transformer.h.0.self_attention.query_key_value.bias", QROLE_BIAS, 1,
                      192, 0);
        expect_tensor(&plan, "transformer.h.0.self_attention.dense.bias", QROLE_BIAS, 1, 64, 0);
        expect_tensor(&plan, "transformer.h.1.mlp.dense_h_to_4h.bias", QROLE_BIAS, 1, 256, 0);
        expect_tensor(&plan, "transformer.h.1.mlp.dense_4h_to_h.bias", QROLE_BIAS, 1, 64, 0);
        expect_tensor(&plan, "transformer.h.1.input_layernorm.bias", QROLE_NORM, 1, 64, 0);
        expect_tensor(&plan, "transformer.h.1.post_attention_layernorm.weight", QROLE_NORM, 1, 64,
                      0);
        expect_tensor(&plan, "transformer.h.1.post_attention_layernorm.bias", QROLE_NORM, 1, 64, 0);
        qmodel_plan_free(&plan);
        parsed_free(&p);
    }
}
END_TEST

START_TEST(falcon_rope_and_errors)
{
    /* rotary Falcon reads both rope forms */
    parsed a = ok("{\"architectures\": [\"FalconForCausalLM\"], \"hidden_size\": 64,"
                  " \"num_attention_heads\": 4, \"num_hidden_layers\": 1, \"vocab_size\": 9,"
                  " \"rope_theta\": 42.0, \"rope_scaling\": {\"type\": \"linear\", \"factor\": 2}}");
    parsed b = ok("{\"architectures\": [\"FalconForCausalLM\"], \"hidden_size\": 64,"
                  " \"num_attention_heads\": 4, \"num_hidden_layers\": 1, \"vocab_size\": 9,"
                  " \"rope_parameters\": {\"rope_type\": \"linear\", \"factor\": 2,"
                  " \"rope_theta\": 42.0}, \"dtype\": \"float32\"}");
    ck_assert(cJSON_Compare(rope(a.hp), rope(b.hp), 1));
    ck_assert_double_eq(num(rope(b.hp), "theta"), 42.0);
    ck_assert_str_eq(str(b.hp, "source_dtype"), "float32");
    parsed_free(&a);
    parsed_free(&b);

    const char *m;
    m = fails("{\"architectures\": [\"FalconForCausalLM\"], \"num_attention_heads\": 4,"
              " \"num_hidden_layers\": 1, \"vocab_size\": 9}");
    ASSERT_HAS(m, "config.json");
    ASSERT_HAS(m, "hidden_size");
    m = fails("{\"architectures\": [\"RWForCausalLM\"], \"n_embed\": 64, \"n_layer\": 1,"
              " \"vocab_size\": 9}");
    ASSERT_HAS(m, "num_attention_heads");
    m = fails("{\"architectures\": [\"FalconForCausalLM\"], \"hidden_size\": 66,"
              " \"num_attention_heads\": 4, \"num_hidden_layers\": 1, \"vocab_size\": 9}");
    ASSERT_HAS(m, "hidden_size");
    m = fails("{\"architectures\": [\"FalconForCausalLM\"], \"hidden_size\": 64,"
              " \"new_decoder_architecture\": true, \"num_kv_heads\": 3,"
              " \"num_attention_heads\": 4, \"num_hidden_layers\": 1, \"vocab_size\": 9}");
    ASSERT_HAS(m, "num_kv_heads");
    m = fails("{\"architectures\": [\"FalconForCausalLM\"], \"hidden_size\": 64,"
              " \"num_attention_heads\": 4, \"num_hidden_layers\": 1, \"vocab_size\": 9,"
              " \"rope_scaling\": {\"type\": \"yarn\", \"factor\": 2}}");
    ASSERT_HAS(m, "rope_scaling.type");
    ASSERT_HAS(m, "yarn");
    m = fails("{\"architectures\": [\"FalconForCausalLM\"], \"hidden_size\": 64,"
              " \"num_attention_heads\": 4, \"num_hidden_layers\": 1, \"vocab_size\": 9,"
              " \"activation\": \"relu\"}");
    ASSERT_HAS(m, "activation");
    m = fails("{\"architectures\": [\"FalconForCausalLM\"], \"hidden_size\": 64,"
              " \"num_attention_heads\": 4, \"num_hidden_layers\": 1, \"vocab_size\": 9,"
              " \"multi_query\": false, \"num_kv_heads\": 2}");
    ASSERT_HAS(m, "num_kv_heads");
    m = fails("{\"architectures\": [\"FalconForCausalLM\"], \"hidden_size\": 64,"
              " \"num_attention_heads\": 4, \"num_hidden_layers\": 1, \"vocab_size\": 9,"
              " \"new_decoder_architecture\": true, \"parallel_attn\": false}");
    ASSERT_HAS(m, "parallel_attn");
    m = fails("{\"architectures\": [\"FalconForCausalLM\"], \"hidden_size\": 64,"
              " \"num_attention_heads\": 4, \"num_hidden_layers\": 1, \"vocab_size\": 9,"
              " \"num_ln_in_parallel_attn\": 2}");
    ASSERT_HAS(m, "num_ln_in_parallel_attn");
    m = fails("{\"architectures\": [\"FalconForCausalLM\"], \"hidden_size\": 64,"
              " \"num_attention_heads\": 4, \"num_hidden_layers\": 1, \"vocab_size\": 9,"
              " \"alibi\": 1}");
    ASSERT_HAS(m, "alibi");
    /* alibi ignores rope settings, even unsupported ones */
    parsed p = ok("{\"architectures\": [\"FalconForCausalLM\"], \"hidden_size\": 64,"
                  " \"num_attention_heads\": 4, \"num_hidden_layers\": 1, \"vocab_size\": 9,"
                  " \"alibi\": true, \"rope_scaling\": {\"type\": \"yarn\"}}");
    ck_assert_str_eq(str(rope(p.hp), "type"), "none");
    parsed_free(&p);
}
END_TEST

START_TEST(plan_rejects_bad_hparams)
{
    qmodel_plan plan = {0};
    qerr err;
    cJSON *hp = cJSON_Parse("{\"vocab_size\": 3}");
    qerr_clear(&err);
    ck_assert(!qmodel_family_by_name("llama")->plan(hp, true, &plan, &err));
    ASSERT_HAS(err.msg, "hparams");
    qerr_clear(&err);
    ck_assert(!qmodel_family_by_name("falcon")->plan(hp, true, &plan, &err));
    ASSERT_HAS(err.msg, "hparams");
    cJSON_Delete(hp);
    qmodel_plan_free(&plan);
    ck_assert_ptr_null(qmodel_family_by_name("gpt2"));
    ck_assert_ptr_null(qmodel_config_dtype(NULL));
}
END_TEST

/* ---- checkpoints against plans -------------------------------------------------- */

/* Write model.safetensors holding the plan's tensors (F16 zeros), with one
 * tensor optionally altered: `bad_shape` gets a different first dimension,
 * `bad_dtype` is stored as I8, `skip` is left out; plus `extra` tensors. */
static void write_plan_checkpoint(const char *dir, const qmodel_plan *plan, const char *skip,
                                  const char *bad_shape, const char *bad_dtype,
                                  const char *const *extra, int nextra)
{
    tu_st_tensor *t = calloc((size_t)(plan->count + nextra), sizeof *t);
    int n = 0;
    for (int i = 0; i < plan->count + nextra; i++) {
        const char *name = i < plan->count ? plan->tensors[i].name : extra[i - plan->count];
        if (skip && strcmp(name, skip) == 0)
            continue;
        int nd = i < plan->count ? plan->tensors[i].ndim : 1;
        uint64_t sh[2] = {i < plan->count ? plan->tensors[i].shape[0] : 4,
                          i < plan->count ? plan->tensors[i].shape[1] : 0};
        if (bad_shape && strcmp(name, bad_shape) == 0)
            sh[0] += 1;
        bool i8 = bad_dtype && strcmp(name, bad_dtype) == 0;
        uint64_t numel = sh[0] * (nd == 2 ? sh[1] : 1);
        t[n++] = (tu_st_tensor){.name = name, .dtype = i8 ? "I8" : "F16", .ndim = nd,
                                .shape = {sh[0], sh[1]}, .data = NULL,
                                .nbytes = numel * (i8 ? 1 : 2)};
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    ck_assert_int_eq(tu_write_safetensors(path, t, n), 0);
    free(t);
}

static const char *small_llama =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"vocab_size\": 40, \"hidden_size\": 16,"
    " \"intermediate_size\": 24, \"num_hidden_layers\": 2, \"num_attention_heads\": 4,"
    " \"num_key_value_heads\": 2}";

static const char *check_dir(const char *dir, const qmodel_plan *plan)
{
    static qerr err;
    qerr_clear(&err);
    hf_checkpoint *ck = hf_open(dir, &err);
    ck_assert_msg(ck != NULL, "%s", err.msg);
    bool ok = qmodel_check_checkpoint(plan, ck, &err);
    hf_close(ck);
    return ok ? NULL : err.msg;
}

START_TEST(check_checkpoint_against_plan)
{
    parsed p = ok(small_llama);
    qmodel_plan plan = make_plan(&p, true);
    char *dir = tu_tmpdir();
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    ck_assert_int_eq(tu_write_file(path, small_llama, strlen(small_llama)), 0);

    const char *extras[] = {"model.layers.0.self_attn.rotary_emb.inv_freq", "something.else"};
    write_plan_checkpoint(dir, &plan, NULL, NULL, NULL, extras, 2);
    ck_assert_ptr_null(check_dir(dir, &plan));
    qerr err;
    hf_checkpoint *ck = hf_open(dir, &err);
    const char *names[4];
    ck_assert_int_eq(qmodel_unplanned_tensors(&plan, ck, names, 4), 1);
    ck_assert_str_eq(names[0], "something.else");
    ck_assert(qmodel_is_harmless_extra("model.layers.3.self_attn.rotary_emb.inv_freq"));
    ck_assert(!qmodel_is_harmless_extra("model.layers.3.self_attn.q_proj.weight"));
    hf_close(ck);

    const char *k = "model.layers.1.self_attn.k_proj.weight";
    write_plan_checkpoint(dir, &plan, NULL, k, NULL, NULL, 0);
    const char *m = check_dir(dir, &plan);
    ASSERT_HAS(m, k);
    ASSERT_HAS(m, "expected shape [8, 16]");
    ASSERT_HAS(m, "found [9, 16]");

    write_plan_checkpoint(dir, &plan, "model.norm.weight", NULL, NULL, NULL, 0);
    m = check_dir(dir, &plan);
    ASSERT_HAS(m, "model.norm.weight");
    ASSERT_HAS(m, "missing");

    write_plan_checkpoint(dir, &plan, NULL, NULL, "lm_head.weight", NULL, 0);
    m = check_dir(dir, &plan);
    ASSERT_HAS(m, "lm_head.weight");
    ASSERT_HAS(m, "I8");

    qmodel_plan_free(&plan);
    parsed_free(&p);
    tu_rmtree(dir);
    free(dir);
}
END_TEST

/* Tiny Hugging Face checkpoints written by transformers (tests/data/tiny/<variant>/):
 * each must open, parse, plan and match its plan exactly, with no unplanned
 * tensors. Skipped when the directory is absent. */
START_TEST(tiny_checkpoints_match_plans)
{
    const char *root = tu_data_path("tiny");
    DIR *d = opendir(root);
    if (!d) {
        fprintf(stderr, "skipping tiny checkpoints: %s absent\n", root);
        return;
    }
    int checked = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.')
            continue;
        char dir[4096], cfg[4200];
        snprintf(dir, sizeof dir, "%s/%s", root, de->d_name);
        snprintf(cfg, sizeof cfg, "%s/config.json", dir);
        if (!tu_file_exists(cfg))
            continue;
        qerr err;
        qerr_clear(&err);
        hf_checkpoint *ck = hf_open(dir, &err);
        ck_assert_msg(ck != NULL, "%s: %s", de->d_name, err.msg);
        const qmodel_family *fam = qmodel_family_for_config(hf_config(ck), &err);
        ck_assert_msg(fam != NULL, "%s: %s", de->d_name, err.msg);
        cJSON *hp = fam->read_config(hf_config(ck), &err);
        ck_assert_msg(hp != NULL, "%s: %s", de->d_name, err.msg);
        qmodel_plan plan = {0};
        ck_assert_msg(fam->plan(hp, hf_find(ck, "lm_head.weight") != NULL, &plan, &err), "%s: %s",
                      de->d_name, err.msg);
        ck_assert_msg(qmodel_check_checkpoint(&plan, ck, &err), "%s: %s", de->d_name, err.msg);
        const char *extra[1] = {NULL};
        int nextra = qmodel_unplanned_tensors(&plan, ck, extra, 1);
        ck_assert_msg(nextra == 0, "%s: %d unplanned tensors, e.g. %s", de->d_name, nextra,
                      extra[0] ? extra[0] : "?");
        /* a tied checkpoint may store lm_head; otherwise every tensor is planned */
        bool tied = cJSON_IsTrue(cJSON_GetObjectItem(hp, "tie_word_embeddings"));
        ck_assert_int_eq(plan.count + (tied && hf_find(ck, "lm_head.weight") ? 1 : 0),
                         hf_tensor_count(ck));
        qmodel_plan_free(&plan);
        cJSON_Delete(hp);
        hf_close(ck);
        checked++;
    }
    closedir(d);
    fprintf(stderr, "tiny checkpoints checked: %d\n", checked);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("models");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, llama_mha_untied);
    tcase_add_test(tc, llama_gqa_head_dim_tied_bias);
    tcase_add_test(tc, llama_rope_both_forms);
    tcase_add_test(tc, llama_errors);
    tcase_add_test(tc, mistral_and_model_type);
    tcase_add_test(tc, falcon_7b_multi_query);
    tcase_add_test(tc, falcon_40b_new_arch);
    tcase_add_test(tc, falcon_rw_alibi);
    tcase_add_test(tc, falcon_rope_and_errors);
    tcase_add_test(tc, plan_rejects_bad_hparams);
    tcase_add_test(tc, check_checkpoint_against_plan);
    tcase_add_test(tc, tiny_checkpoints_match_plans);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return tu_run(suite()); }
