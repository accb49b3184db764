/* Chat templates: a small, sandboxed interpreter for the Jinja2 subset that
 * Hugging Face chat templates use (tokenizer.chat_template in the .qbin
 * metadata), rendering a conversation the way transformers'
 * apply_chat_template(messages, add_generation_prompt=..., tokenize=False)
 * does (trim_blocks and lstrip_blocks on, loop controls enabled,
 * raise_exception / strftime_now / namespace / dict globals, a tojson that
 * keeps non-ASCII text). docs/chat-templates.md lists what is supported.
 *
 * Templates come from model files, so they are untrusted: every render runs
 * under limits (output size, scratch memory, steps, call depth) and any
 * construct outside the subset is an error naming its line and column.
 *
 * A compiled template is immutable: several threads may render it at once. */
#ifndef QRUN_CHAT_TEMPLATE_H
#define QRUN_CHAT_TEMPLATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "error.h"

typedef struct chat_template chat_template;

/* One message; content may be NULL (the template then sees none). */
typedef struct chat_message {
    const char *role;
    const char *content;
} chat_message;

/* An extra string variable (e.g. "unk_token", "date_string"). */
typedef struct chat_var {
    const char *name;
    const char *value;
} chat_var;

/* Render limits; a zero field takes the default in parentheses. */
typedef struct chat_limits {
    size_t max_output;  /* bytes of rendered text (64 MiB) */
    size_t max_memory;  /* bytes of scratch memory for one render (512 MiB) */
    uint64_t max_steps; /* statements + loop iterations + calls (20,000,000) */
    int max_depth;      /* nested macro calls (64) */
} chat_limits;

#define CHAT_DEFAULT_MAX_OUTPUT ((size_t)64 << 20)
#define CHAT_DEFAULT_MAX_MEMORY ((size_t)512 << 20)
#define CHAT_DEFAULT_MAX_STEPS ((uint64_t)20000000)
#define CHAT_DEFAULT_MAX_DEPTH 64

typedef struct chat_render_opts {
    const chat_message *messages;
    size_t n_messages;
    bool add_generation_prompt;
    /* NULL leaves the variable undefined (as transformers does for a
     * tokenizer without that special token). */
    const char *bos_token;
    const char *eos_token;
    const chat_var *vars; /* extra string variables; they may not replace
                             messages / add_generation_prompt */
    size_t n_vars;
    /* The clock strftime_now() reads; NULL: the current local time. */
    const struct tm *now;
    chat_limits limits;
} chat_render_opts;

/* Compile `len` bytes of Jinja source. Syntax errors and unsupported tags
 * fail here with QRUN_ERR_FORMAT / QRUN_ERR_UNSUPPORTED and a message that
 * names the line and column. */
qrun_status chat_template_compile(const char *src, size_t len, chat_template **out, qerr *err);

/* Render; *out is a malloc'ed NUL-terminated string (free() it), *out_len
 * (may be NULL) its length. Errors:
 *   QRUN_ERR_INVALID_ARGUMENT  the template called raise_exception(msg); the
 *                              message is "chat template raised an exception: msg"
 *                              (also: bad arguments to this function)
 *   QRUN_ERR_FORMAT            a run-time error in the template (type error,
 *                              undefined value used, a limit exceeded), with
 *                              line and column
 *   QRUN_ERR_UNSUPPORTED       a filter, test, method or operator outside the subset
 *   QRUN_ERR_NO_MEMORY         host allocation failed */
qrun_status chat_template_render(const chat_template *t, const chat_render_opts *opts, char **out,
                                 size_t *out_len, qerr *err);

void chat_template_free(chat_template *t);

/* The fallback for models without a chat template: each message becomes
 * "<Role>: <content>\n" where <Role> is the role with its first letter
 * upper-cased (system -> "System", user -> "User", assistant -> "Assistant");
 * a NULL content renders as empty; add_generation_prompt appends
 * "Assistant:". No special tokens are added (the tokenizer adds BOS).
 * bos_token, eos_token, vars and now are ignored. */
qrun_status chat_plain_render(const chat_render_opts *opts, char **out, size_t *out_len, qerr *err);

#endif
