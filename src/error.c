#include "error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

qrun_status qerr_set(qerr *err, qrun_status code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        err->code = code;
    }
    return code;
}

void qerr_prefix(qerr *err, const char *fmt, ...)
{
    if (!err)
        return;
    char head[QERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(head, sizeof head, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    /* Shift the old message right and put the prefix in front, truncating
     * the tail if the two do not fit. */
    size_t hl = strlen(head), ml = strlen(err->msg);
    if (hl >= QERR_MSG_MAX)
        hl = QERR_MSG_MAX - 1;
    if (hl + ml >= QERR_MSG_MAX)
        ml = QERR_MSG_MAX - 1 - hl;
    memmove(err->msg + hl, err->msg, ml);
    memcpy(err->msg, head, hl);
    err->msg[hl + ml] = '\0';
}

void qerr_clear(qerr *err)
{
    if (err) {
        err->code = QRUN_OK;
        err->msg[0] = '\0';
    }
}
