#ifndef LORIKEET_CPROTOBUFC_SHIM_H
#define LORIKEET_CPROTOBUFC_SHIM_H
#include <protobuf-c/protobuf-c.h>
#endif
