#ifndef LORIKEET_CLORIKEETPROTO_H
#define LORIKEET_CLORIKEETPROTO_H
// Umbrella header for the protobuf-c code generated from proto/ by bin/gen-proto.
#include <protobuf-c/protobuf-c.h>
#include "../generated/lorikeet/v1/common.pb-c.h"
#include "../generated/lorikeet/v1/control.pb-c.h"
#include "../generated/lorikeet/v1/admin.pb-c.h"
#include "../generated/lorikeet/v1/engine.pb-c.h"
#endif
