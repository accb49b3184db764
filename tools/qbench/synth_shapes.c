/* The model shapes qbench can synthesize: the config.json values published
 * with each model on the Hugging Face hub (meta-llama/Llama-2-*-hf,
 * tiiuae/falcon-7b, tiiuae/falcon-40b), written here as constants so that
 * no download is needed. Keys a config.json leaves out take the family's
 * defaults in read_config, as they do for the real file (Falcon:
 * ffn_hidden_size 4·H, max_position_embeddings 2048, tie_word_embeddings
 * true). The two tiny shapes exist for tests: a few MB, odd enough sizes
 * (GQA, grouped fused qkv) to cover both families' layouts. */
#include <cjson/cJSON.h>
#include <string.h>

#include "synth.h"

static const synth_shape shapes[] = {
    {.name = "llama-2-7b", .description = "Llama-2-7B: 32 layers, H 4096, 32 heads, F 11008",
     .architecture = "LlamaForCausalLM", .model_type = "llama", .vocab = 32000, .hidden = 4096,
     .ffn = 11008, .layers = 32, .heads = 32, .kv_heads = 32, .max_pos = 4096,
     .rope_theta = 10000.0, .norm_eps = 1e-5, .tie = false, .dtype = "float16", .bos = 1,
     .eos = 2},
    {.name = "llama-2-13b", .description = "Llama-2-13B: 40 layers, H 5120, 40 heads, F 13824",
     .architecture = "LlamaForCausalLM", .model_type = "llama", .vocab = 32000, .hidden = 5120,
     .ffn = 13824, .layers = 40, .heads = 40, .kv_heads = 40, .max_pos = 4096,
     .rope_theta = 10000.0, .norm_eps = 1e-5, .tie = false, .dtype = "float16", .bos = 1,
     .eos = 2},
    {.name = "llama-2-70b",
     .description = "Llama-2-70B: 80 layers, H 8192, 64 heads / 8 KV heads, F 28672",
     .architecture = "LlamaForCausalLM", .model_type = "llama", .vocab = 32000, .hidden = 8192,
     .ffn = 28672, .layers = 80, .heads = 64, .kv_heads = 8, .max_pos = 4096,
     .rope_theta = 10000.0, .norm_eps = 1e-5, .tie = false, .dtype = "float16", .bos = 1,
     .eos = 2},
    {.name = "falcon-7b",
     .description = "Falcon-7B: 32 layers, H 4544, 71 heads, multi-query",
     .architecture = "FalconForCausalLM", .model_type = "falcon", .vocab = 65024, .hidden = 4544,
     .layers = 32, .heads = 71, .rope_theta = 10000.0, .norm_eps = 1e-5, .tie = true,
     .dtype = "bfloat16", .bos = 11, .eos = 11, .new_arch = false, .multi_query = true,
     .parallel_attn = true, .alibi = false, .bias = false},
    {.name = "falcon-40b",
     .description = "Falcon-40B: 60 layers, H 8192, 128 heads / 8 KV groups",
     .architecture = "FalconForCausalLM", .model_type = "falcon", .vocab = 65024, .hidden = 8192,
     .layers = 60, .heads = 128, .kv_heads = 8, .rope_theta = 10000.0, .norm_eps = 1e-5,
     .tie = true, .dtype = "bfloat16", .bos = 11, .eos = 11, .new_arch = true,
     .multi_query = true, .parallel_attn = true, .alibi = false, .bias = false},
    /* test shapes: untied GQA Llama; Falcon's new architecture with biases */
    {.name = "tiny-llama", .description = "(for tests) 2 layers, H 256, 8 heads / 4 KV heads",
     .test_only = true, .architecture = "LlamaForCausalLM", .model_type = "llama", .vocab = 1000,
     .hidden = 256, .ffn = 688, .layers = 2, .heads = 8, .kv_heads = 4, .max_pos = 512,
     .rope_theta = 10000.0, .norm_eps = 1e-5, .tie = false, .dtype = "float16", .bos = 1,
     .eos = 2},
    {.name = "tiny-falcon",
     .description = "(for tests) 2 layers, H 320, 10 heads / 2 KV groups",
     .test_only = true, .architecture = "FalconForCausalLM", .model_type = "falcon",
     .vocab = 1001, .hidden = 320, .layers = 2, .heads = 10, .kv_heads = 2, .max_pos = 512,
     .rope_theta = 10000.0, .norm_eps = 1e-5, .tie = true, .dtype = "bfloat16", .bos = 11,
     .eos = 11, .new_arch = true, .multi_query = true, .parallel_attn = true, .alibi = false,
     .bias = true},
};
#define NSHAPES (sizeof shapes / sizeof shapes[0])

const synth_shape *synth_shape_find(const char *name)
{
    for (size_t i = 0; name && i < NSHAPES; i++)
        if (strcmp(shapes[i].name, name) == 0)
            return &shapes[i];
    return NULL;
}

void synth_print_names(FILE *f, bool test_only)
{
    bool first = true;
    for (size_t i = 0; i < NSHAPES; i++)
        if (shapes[i].test_only == test_only) {
            fprintf(f, "%s%s", first ? "" : ", ", shapes[i].name);
            first = false;
        }
}

void synth_print_shapes(FILE *f, const char *indent)
{
    for (size_t i = 0; i < NSHAPES; i++)
        fprintf(f, "%s%-12s %s\n", indent, shapes[i].name, shapes[i].description);
}

cJSON *synth_config(const synth_shape *s)
{
    cJSON *c = cJSON_CreateObject();
    if (!c)
        return NULL;
    cJSON *arch = cJSON_AddArrayToObject(c, "architectures");
    if (arch)
        cJSON_AddItemToArray(arch, cJSON_CreateString(s->architecture));
    cJSON_AddStringToObject(c, "model_type", s->model_type);
    cJSON_AddNumberToObject(c, "vocab_size", (double)s->vocab);
    cJSON_AddNumberToObject(c, "hidden_size", (double)s->hidden);
    cJSON_AddNumberToObject(c, "num_hidden_layers", (double)s->layers);
    cJSON_AddNumberToObject(c, "num_attention_heads", (double)s->heads);
    cJSON_AddNumberToObject(c, "rope_theta", s->rope_theta);
    cJSON_AddNumberToObject(c, "bos_token_id", s->bos);
    cJSON_AddNumberToObject(c, "eos_token_id", s->eos);
    cJSON_AddStringToObject(c, "torch_dtype", s->dtype);
    if (strcmp(s->model_type, "llama") == 0) {
        cJSON_AddNumberToObject(c, "intermediate_size", (double)s->ffn);
        cJSON_AddNumberToObject(c, "num_key_value_heads", (double)s->kv_heads);
        cJSON_AddNumberToObject(c, "max_position_embeddings", (double)s->max_pos);
        cJSON_AddNumberToObject(c, "rms_norm_eps", s->norm_eps);
        cJSON_AddStringToObject(c, "hidden_act", "silu");
        cJSON_AddBoolToObject(c, "tie_word_embeddings", s->tie);
        cJSON_AddBoolToObject(c, "attention_bias", false);
        cJSON_AddNullToObject(c, "rope_scaling");
    } else {
        cJSON_AddNumberToObject(c, "layer_norm_epsilon", s->norm_eps);
        cJSON_AddBoolToObject(c, "new_decoder_architecture", s->new_arch);
        cJSON_AddBoolToObject(c, "multi_query", s->multi_query);
        cJSON_AddBoolToObject(c, "parallel_attn", s->parallel_attn);
        cJSON_AddBoolToObject(c, "alibi", s->alibi);
        cJSON_AddBoolToObject(c, "bias", s->bias);
        if (s->new_arch)
            cJSON_AddNumberToObject(c, "num_kv_heads", (double)s->kv_heads);
        /* published Falcon configs leave these to FalconConfig's defaults;
         * the test shapes set them */
        if (s->max_pos)
            cJSON_AddNumberToObject(c, "max_position_embeddings", (double)s->max_pos);
        if (!s->tie)
            cJSON_AddBoolToObject(c, "tie_word_embeddings", false);
    }
    return c;
}
