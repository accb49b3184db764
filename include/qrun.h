/* qrun — public C API.
 *
 * Stable surface for programs that embed qrun. Every handle is opaque and has
 * a create/free pair; every call returns a qrun_status and leaves a message in
 * the handle (or the caller's error buffer) when it fails. The library never
 * prints.
 */
#ifndef QRUN_H
#define QRUN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define QRUN_VERSION_MAJOR 0
#define QRUN_VERSION_MINOR 1
#define QRUN_VERSION_PATCH 0
#define QRUN_VERSION_STRING "0.1.0"

#if defined(_WIN32) || defined(__CYGWIN__)
#define QRUN_API
#elif defined(__GNUC__)
#define QRUN_API __attribute__((visibility("default")))
#else
#define QRUN_API
#endif

/* Status codes. Zero is success; every other value names a class of failure
 * whose details are in the accompanying message. */
typedef enum qrun_status {
    QRUN_OK = 0,
    QRUN_ERR_INVALID_ARGUMENT = 1, /* a parameter is out of range or NULL */
    QRUN_ERR_IO = 2,               /* open/read/write/rename failed */
    QRUN_ERR_FORMAT = 3,           /* a file is truncated, corrupt or hostile */
    QRUN_ERR_UNSUPPORTED = 4,      /* valid input that qrun does not handle */
    QRUN_ERR_NO_MEMORY = 5,        /* host allocation failed or size overflow */
    QRUN_ERR_CHECKSUM = 6,         /* a tensor's checksum does not match */
    QRUN_ERR_NOT_FOUND = 7,        /* a named file, tensor or field is missing */
    QRUN_ERR_DEVICE = 8,           /* GPU error (driver, out of memory) */
    QRUN_ERR_CANCELLED = 9,        /* stopped by the caller */
    QRUN_ERR_INTERNAL = 10         /* a bug in qrun: please report */
} qrun_status;

/* Short English name of a status ("ok", "format error", ...). Never NULL. */
QRUN_API const char *qrun_status_string(qrun_status status);

/* Run-time version of the library ("0.1.0"); compare with QRUN_VERSION_STRING
 * to detect a header/library mismatch. */
QRUN_API const char *qrun_version(void);

/* ======================================================================== *
 * Conventions
 *  - Every handle is opaque and has a create/free pair.
 *  - Functions return a qrun_status. Model-level calls write their error text
 *    into a caller buffer (errbuf, may be NULL); session calls keep it in the
 *    session (qrun_session_last_error).
 *  - A qrun_model is immutable after loading and may be shared by threads.
 *    A qrun_session is used by one thread at a time; qrun_session_cancel()
 *    may be called from any thread.
 *  - Parameter structs start with struct_size and are filled by their
 *    *_init() function first, so fields can be added without breaking
 *    programs built against an older header.
 *  - The library never prints; messages go to the log callback if one is set.
 * ======================================================================== */

#include <stdbool.h>

/* ---- logging ------------------------------------------------------------ */
typedef enum qrun_log_level {
    QRUN_LOG_ERROR = 0,
    QRUN_LOG_WARN = 1,
    QRUN_LOG_INFO = 2,
    QRUN_LOG_DEBUG = 3
} qrun_log_level;
typedef void (*qrun_log_fn)(void *user, qrun_log_level level, const char *message);

/* Free memory the library returned (qrun_chat_apply's text, ...). */
QRUN_API void qrun_free(void *p);

/* ---- models ------------------------------------------------------------- */
typedef struct qrun_model qrun_model;

typedef enum qrun_backend {
    QRUN_BACKEND_AUTO = 0, /* CUDA when a usable GPU is there, else CPU */
    QRUN_BACKEND_CPU = 1,
    QRUN_BACKEND_CUDA = 2
} qrun_backend;

/* Progress of loading in [0, 1]; return false to cancel the load. */
typedef bool (*qrun_progress_fn)(void *user, float fraction);

typedef struct qrun_model_params {
    uint32_t struct_size;
    qrun_backend backend;
    int n_threads;          /* CPU threads; 0 = one per core */
    int gpu_layers;         /* layers on the GPU; -1 = as many as fit, 0 = none */
    bool verify_checksums;  /* check every tensor's checksum (default true) */
    qrun_progress_fn progress;
    void *progress_user;
    qrun_log_fn log;
    void *log_user;
} qrun_model_params;

QRUN_API void qrun_model_params_init(qrun_model_params *p);
/* Load a .qbin file. On failure *model is NULL and errbuf holds the reason
 * (naming the file and what is wrong). */
QRUN_API qrun_status qrun_model_load(const char *path, const qrun_model_params *p,
                                     qrun_model **model, char *errbuf, size_t errbuf_size);
QRUN_API void qrun_model_free(qrun_model *model);

typedef struct qrun_model_info {
    const char *architecture;   /* "llama", "falcon" */
    const char *weights;        /* "nf4", "fp4", "int8", "f16", "bf16" */
    const char *compute_dtype;  /* "f16", "bf16" */
    const char *backend;        /* "cpu", "cuda", "cuda+cpu" (partial offload) */
    int32_t vocab_size;
    int32_t n_ctx_train;        /* max_position_embeddings */
    int32_t n_layers;
    uint64_t n_params;
    uint64_t weight_bytes;      /* bytes of all tensors */
    int32_t bos_id, eos_id;     /* -1 when none */
    bool has_chat_template;
    /* Added with the CUDA engine (backend is then "cuda", or "cuda+cpu" when
     * only the first n_gpu_layers layers are on the GPU): */
    int32_t n_gpu_layers;       /* decoder layers on the GPU; 0 = CPU only */
    const char *gpu_name;       /* the GPU's name; "" when none is used */
    uint64_t gpu_weight_bytes;  /* device memory holding the weights */
} qrun_model_info;
/* The strings stay valid while the model lives. */
QRUN_API void qrun_model_get_info(const qrun_model *model, qrun_model_info *info);
/* The .qbin metadata as JSON text (valid while the model lives). */
QRUN_API const char *qrun_model_metadata_json(const qrun_model *model);

/* ---- tokens ------------------------------------------------------------- */
enum {
    QRUN_TOKENIZE_ADD_SPECIAL = 1u << 0,   /* BOS / the tokenizer's template */
    QRUN_TOKENIZE_PARSE_SPECIAL = 1u << 1, /* "<|im_start|>" in text -> its id */
};
/* Tokenize UTF-8 text. Writes at most `cap` ids and sets *n_ids to the
 * number the text needs: when *n_ids > cap, call again with a larger
 * buffer. Invalid UTF-8 -> QRUN_ERR_INVALID_ARGUMENT naming the offset. */
QRUN_API qrun_status qrun_tokenize(const qrun_model *model, const char *text, size_t len,
                                   unsigned flags, int32_t *ids, size_t cap, size_t *n_ids,
                                   char *errbuf, size_t errbuf_size);
enum { QRUN_DETOKENIZE_SKIP_SPECIAL = 1u << 0 };
/* Ids to UTF-8 text, NUL-terminated when it fits. Writes at most `cap`
 * bytes and sets *len to the length the text needs (without the NUL). */
QRUN_API qrun_status qrun_detokenize(const qrun_model *model, const int32_t *ids, size_t n_ids,
                                     unsigned flags, char *text, size_t cap, size_t *len,
                                     char *errbuf, size_t errbuf_size);
/* The vocabulary string of an id, or NULL when out of range. */
QRUN_API const char *qrun_token_piece(const qrun_model *model, int32_t id);

/* ---- chat templates ------------------------------------------------------ */
typedef struct qrun_chat_message {
    const char *role;    /* "system", "user", "assistant" */
    const char *content;
} qrun_chat_message;
/* Render a conversation with the model's chat template (or qrun's plain
 * format when the model has none). *text is freed with qrun_free(). */
QRUN_API qrun_status qrun_chat_apply(const qrun_model *model, const qrun_chat_message *messages,
                                     size_t n_messages, bool add_generation_prompt, char **text,
                                     char *errbuf, size_t errbuf_size);

/* ---- sessions ------------------------------------------------------------ */
typedef struct qrun_session qrun_session;

typedef enum qrun_kv_type { QRUN_KV_F16 = 0, QRUN_KV_F32 = 1 } qrun_kv_type;

typedef struct qrun_session_params {
    uint32_t struct_size;
    int n_ctx;           /* context length; 0 = min(model's, 4096) */
    int n_batch;         /* prompt tokens per forward pass (default 512) */
    qrun_kv_type kv_type;
    int n_threads;       /* 0 = the model's setting */
} qrun_session_params;

QRUN_API void qrun_session_params_init(qrun_session_params *p);
QRUN_API qrun_status qrun_session_create(qrun_model *model, const qrun_session_params *p,
                                         qrun_session **session, char *errbuf,
                                         size_t errbuf_size);
QRUN_API void qrun_session_free(qrun_session *s);
/* Text of the last failed call on this session ("" when none). */
QRUN_API const char *qrun_session_last_error(const qrun_session *s);
QRUN_API int qrun_session_n_ctx(const qrun_session *s);
/* Tokens currently in the context. */
QRUN_API int qrun_session_n_past(const qrun_session *s);
/* Forget the context (or keep only its first n_keep tokens; n_keep >= n_past
 * keeps everything). When tokens are dropped, qrun_session_logits() is NULL
 * until the next eval. */
QRUN_API qrun_status qrun_session_rewind(qrun_session *s, int n_keep);

/* Append tokens to the context and run the model on them. The logits of the
 * last token are kept (qrun_session_logits). When logits_all is not NULL it
 * receives n_ids rows of vocab_size logits, one per token (perplexity).
 * More tokens than the context holds, or an id outside the vocabulary ->
 * QRUN_ERR_INVALID_ARGUMENT. On failure (cancel included) the context keeps
 * its previous tokens and qrun_session_logits() is NULL until the next
 * successful eval. */
QRUN_API qrun_status qrun_session_eval(qrun_session *s, const int32_t *ids, size_t n_ids,
                                       float *logits_all);
/* vocab_size logits after the last eval (NULL before the first). */
QRUN_API const float *qrun_session_logits(const qrun_session *s);

/* Stop the eval or generation running on `s` as soon as possible (it
 * returns QRUN_ERR_CANCELLED). Safe from any thread; cleared when the next
 * call on the session starts. */
QRUN_API void qrun_session_cancel(qrun_session *s);

/* ---- generation ---------------------------------------------------------- */
typedef struct qrun_sampler_params {
    uint32_t struct_size;
    float temperature;     /* 0.8; 0 = greedy */
    int top_k;             /* 40; 0 = off */
    float top_p;           /* 0.95; 1 = off */
    float min_p;           /* 0.05; 0 = off */
    float repeat_penalty;  /* 1.0 = off */
    int repeat_last_n;     /* 64; 0 = off, -1 = whole context */
    uint64_t seed;         /* same seed + same input = same output */
} qrun_sampler_params;

typedef struct qrun_generate_params {
    uint32_t struct_size;
    qrun_sampler_params sampler;
    int max_new_tokens;          /* 256; -1 = until the context is full */
    const char *const *stop;     /* stop strings (not emitted) */
    size_t n_stop;
    bool stop_at_eos;            /* true */
    int n_sequences;             /* independent continuations of one prompt (1) */
    unsigned tokenize_flags;     /* for text prompts: QRUN_TOKENIZE_ADD_SPECIAL */
} qrun_generate_params;

typedef enum qrun_stop_reason {
    QRUN_STOP_EOS = 0,       /* the model ended its text */
    QRUN_STOP_LENGTH = 1,    /* max_new_tokens reached */
    QRUN_STOP_STRING = 2,    /* a stop string appeared */
    QRUN_STOP_CONTEXT = 3,   /* the context is full */
    QRUN_STOP_CALLBACK = 4,  /* the token callback returned false */
    QRUN_STOP_CANCELLED = 5  /* qrun_session_cancel */
} qrun_stop_reason;

/* Called once per generated token of sequence `seq` with the text it
 * releases (complete UTF-8; may be empty when a token only starts a
 * character or may begin a stop string; not NUL-terminated). At the end of a
 * sequence, text still held back is delivered in one more call with
 * token == -1. EOS ending a sequence (stop_at_eos) is not reported, and the
 * text of a stop string is never delivered. Return false to stop that
 * sequence (QRUN_STOP_CALLBACK; the next sequence, if any, still runs). */
typedef bool (*qrun_token_fn)(void *user, int seq, int32_t token, const char *text, size_t len);

typedef struct qrun_generate_result {
    qrun_stop_reason stop_reason;  /* of the last sequence */
    int n_prompt_tokens;           /* evaluated for this call (after prefix reuse) */
    int n_generated;               /* over all sequences */
    double prompt_seconds;
    double generate_seconds;
} qrun_generate_result;

QRUN_API void qrun_sampler_params_init(qrun_sampler_params *p);
QRUN_API void qrun_generate_params_init(qrun_generate_params *p);

/* Tokenize `prompt` (tokenize_flags), then generate as qrun_generate_tokens. */
QRUN_API qrun_status qrun_generate(qrun_session *s, const char *prompt,
                                   const qrun_generate_params *p, qrun_token_fn on_token,
                                   void *user, qrun_generate_result *result);
/* Make the context exactly prompt_ids (reusing the cached prefix they share
 * with the session's current tokens; at least the last prompt token is
 * evaluated again unless the context already ends exactly there), then
 * sample up to max_new_tokens per sequence. With n_sequences > 1 each
 * sequence restarts from the prompt with its own random stream: sequence i
 * samples as a single-sequence call with seed + i would. Afterwards the
 * context holds the prompt and the last sequence's tokens except its final
 * one (a sampled token is evaluated only when another one is to follow). A
 * prompt that does not fit the context -> QRUN_ERR_INVALID_ARGUMENT with the
 * numbers; an empty prompt -> QRUN_ERR_INVALID_ARGUMENT. Cancelled ->
 * QRUN_ERR_CANCELLED with stop_reason QRUN_STOP_CANCELLED. `result` and
 * `on_token` may be NULL; p NULL = the defaults. */
QRUN_API qrun_status qrun_generate_tokens(qrun_session *s, const int32_t *prompt_ids,
                                          size_t n_prompt, const qrun_generate_params *p,
                                          qrun_token_fn on_token, void *user,
                                          qrun_generate_result *result);

#ifdef __cplusplus
}
#endif
#endif /* QRUN_H */
