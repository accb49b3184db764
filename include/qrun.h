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

#ifdef __cplusplus
}
#endif
#endif /* QRUN_H */
