/* Internal error reporting: a status code plus a message naming the file,
 * tensor or field at fault. Every internal function that can fail takes a
 * `qerr *` (which may be NULL when the caller does not want the text). */
#ifndef QRUN_ERROR_H
#define QRUN_ERROR_H

#include "qrun.h"

#ifdef __cplusplus
extern "C" {
#endif

#define QERR_MSG_MAX 1024

typedef struct qerr {
    qrun_status code;
    char msg[QERR_MSG_MAX];
} qerr;

/* Record `code` and a printf-style message in `err` (if not NULL) and return
 * `code`, so callers can write `return qerr_set(err, QRUN_ERR_IO, ...)`. */
qrun_status qerr_set(qerr *err, qrun_status code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* Prepend context ("reading shard x: ") to an existing message. */
void qerr_prefix(qerr *err, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

void qerr_clear(qerr *err);

#ifdef __cplusplus
}
#endif

#endif
