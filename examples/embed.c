/* Embedding qrun in an application: one model shared by two sessions that
 * generate at the same time on two threads with streaming callbacks, then a
 * long generation cancelled from another thread (a "Stop" button).
 *
 * Uses only the public header <qrun.h> and the shared library.
 *
 *   embed_example MODEL.qbin [PROMPT]
 *
 * Exit status 0 when everything worked, 1 otherwise. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "qrun.h"

/* ---- two sessions on two threads ------------------------------------------------ */

typedef struct job {
    int id;                  /* 1 or 2 */
    qrun_model *model;       /* shared, read-only */
    const char *prompt;
    uint64_t seed;
    char text[16384];        /* what the callback streamed */
    size_t len;
    int tokens;
    qrun_status status;
    qrun_generate_result result;
    char error[512];
} job;

static bool collect_text(void *user, int seq, int32_t token, const char *text, size_t len)
{
    (void)seq;
    job *j = user;
    if (token >= 0)
        j->tokens++;
    if (j->len + len < sizeof j->text) {
        memcpy(j->text + j->len, text, len);
        j->len += len;
        j->text[j->len] = '\0';
    }
    return true; /* keep going */
}

static void *run_job(void *arg)
{
    job *j = arg;
    qrun_session *s = NULL;
    qrun_session_params sp;
    qrun_session_params_init(&sp);
    sp.n_ctx = 512;
    j->status = qrun_session_create(j->model, &sp, &s, j->error, sizeof j->error);
    if (j->status != QRUN_OK)
        return NULL;
    qrun_generate_params gp;
    qrun_generate_params_init(&gp);
    gp.max_new_tokens = 32;
    gp.sampler.seed = j->seed;
    j->status = qrun_generate(s, j->prompt, &gp, collect_text, j, &j->result);
    if (j->status != QRUN_OK)
        snprintf(j->error, sizeof j->error, "%s", qrun_session_last_error(s));
    qrun_session_free(s);
    return NULL;
}

static const char *stop_name(qrun_stop_reason r)
{
    switch (r) {
    case QRUN_STOP_EOS: return "end of text";
    case QRUN_STOP_LENGTH: return "length";
    case QRUN_STOP_STRING: return "stop string";
    case QRUN_STOP_CONTEXT: return "context full";
    case QRUN_STOP_CALLBACK: return "callback";
    case QRUN_STOP_CANCELLED: return "cancelled";
    }
    return "?";
}

/* ---- cancelling from another thread ----------------------------------------------- */

typedef struct stopper {
    qrun_session *session;
    atomic_int tokens;  /* streamed so far (written by the generating thread) */
    int after;          /* cancel after this many tokens */
} stopper;

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static bool stream_to_stdout(void *user, int seq, int32_t token, const char *text, size_t len)
{
    (void)seq;
    stopper *st = user;
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    if (token >= 0)
        atomic_fetch_add(&st->tokens, 1);
    sleep_ms(2); /* a UI would draw the text here */
    return true;
}

/* The "Stop" button: qrun_session_cancel is the one call that is safe on a
 * session another thread is using. */
static void *press_stop(void *arg)
{
    stopper *st = arg;
    while (atomic_load(&st->tokens) < st->after)
        sleep_ms(1);
    qrun_session_cancel(st->session);
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODEL.qbin [PROMPT]\n", argv[0]);
        return 2;
    }
    const char *prompt = argc > 2 ? argv[2] : "Once upon a time";
    printf("qrun %s (header %s)\n", qrun_version(), QRUN_VERSION_STRING);

    char err[512];
    qrun_model_params mp;
    qrun_model_params_init(&mp);
    qrun_model *model = NULL;
    qrun_status st = qrun_model_load(argv[1], &mp, &model, err, sizeof err);
    if (st != QRUN_OK) {
        fprintf(stderr, "cannot load %s: %s (%s)\n", argv[1], err, qrun_status_string(st));
        return 1;
    }
    qrun_model_info info;
    qrun_model_get_info(model, &info);
    printf("model: %s, %s weights, %d layers, vocab %d, backend %s\n", info.architecture,
           info.weights, info.n_layers, info.vocab_size, info.backend);

    /* Two sessions, each on its own thread, sharing the model. */
    static job jobs[2];
    pthread_t th[2];
    for (int i = 0; i < 2; i++) {
        jobs[i].id = i + 1;
        jobs[i].model = model;
        jobs[i].prompt = prompt;
        jobs[i].seed = 100 + (uint64_t)i;
        if (pthread_create(&th[i], NULL, run_job, &jobs[i]) != 0) {
            fprintf(stderr, "pthread_create failed\n");
            return 1;
        }
    }
    int ok = 1;
    for (int i = 0; i < 2; i++) {
        pthread_join(th[i], NULL);
        job *j = &jobs[i];
        if (j->status != QRUN_OK) {
            fprintf(stderr, "session %d failed: %s (%s)\n", j->id, j->error,
                    qrun_status_string(j->status));
            ok = 0;
            continue;
        }
        printf("session %d: %d tokens (%s, prompt %.3f s, generation %.3f s): %s%s\n", j->id,
               j->result.n_generated, stop_name(j->result.stop_reason),
               j->result.prompt_seconds, j->result.generate_seconds, prompt, j->text);
    }

    /* A long generation, cancelled from another thread after a few tokens. */
    qrun_session *s = NULL;
    st = qrun_session_create(model, NULL, &s, err, sizeof err);
    if (st != QRUN_OK) {
        fprintf(stderr, "session: %s\n", err);
        qrun_model_free(model);
        return 1;
    }
    stopper stp = {.session = s, .after = 5};
    atomic_init(&stp.tokens, 0);
    pthread_t stop_thread;
    pthread_create(&stop_thread, NULL, press_stop, &stp);
    qrun_generate_params gp;
    qrun_generate_params_init(&gp);
    gp.max_new_tokens = -1; /* until the context is full */
    gp.stop_at_eos = false;
    qrun_generate_result res;
    printf("long generation: %s", prompt);
    st = qrun_generate(s, prompt, &gp, stream_to_stdout, &stp, &res);
    printf("\n");
    pthread_join(stop_thread, NULL);
    if (st == QRUN_ERR_CANCELLED && res.stop_reason == QRUN_STOP_CANCELLED) {
        printf("long generation cancelled after %d tokens\n", res.n_generated);
    } else {
        fprintf(stderr, "long generation was not cancelled: %s (%s)\n", qrun_status_string(st),
                qrun_session_last_error(s));
        ok = 0;
    }
    /* The session is usable again after a cancel. */
    gp.max_new_tokens = 4;
    st = qrun_generate(s, prompt, &gp, NULL, NULL, &res);
    if (st != QRUN_OK) {
        fprintf(stderr, "generation after cancel failed: %s\n", qrun_session_last_error(s));
        ok = 0;
    }
    qrun_session_free(s);
    qrun_model_free(model);
    printf("%s\n", ok ? "ok" : "FAILED");
    return ok ? 0 : 1;
}
