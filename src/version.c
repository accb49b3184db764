#include "qrun.h"

const char *qrun_version(void) { return QRUN_VERSION_STRING; }

const char *qrun_status_string(qrun_status status)
{
    switch (status) {
    case QRUN_OK: return "ok";
    case QRUN_ERR_INVALID_ARGUMENT: return "invalid argument";
    case QRUN_ERR_IO: return "I/O error";
    case QRUN_ERR_FORMAT: return "format error";
    case QRUN_ERR_UNSUPPORTED: return "unsupported";
    case QRUN_ERR_NO_MEMORY: return "out of memory";
    case QRUN_ERR_CHECKSUM: return "checksum mismatch";
    case QRUN_ERR_NOT_FOUND: return "not found";
    case QRUN_ERR_DEVICE: return "device error";
    case QRUN_ERR_CANCELLED: return "cancelled";
    case QRUN_ERR_INTERNAL: return "internal error";
    }
    return "unknown status";
}
