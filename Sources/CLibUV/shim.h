#ifndef LORIKEET_CLIBUV_SHIM_H
#define LORIKEET_CLIBUV_SHIM_H
#include <uv.h>
#endif
