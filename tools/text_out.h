/* Text output helpers shared by the command-line tools (qrun, qeval). */
#ifndef QRUN_TOOLS_TEXT_OUT_H
#define QRUN_TOOLS_TEXT_OUT_H

#include <stddef.h>
#include <stdio.h>

/* Length of the valid UTF-8 sequence at s[0..n), or 0 when it is not one. */
size_t text_utf8_len(const unsigned char *s, size_t n);
/* A JSON string literal; bytes that are not valid UTF-8 become U+FFFD so the
 * output always parses. */
void text_json_string(FILE *f, const char *s, size_t n);

#endif
