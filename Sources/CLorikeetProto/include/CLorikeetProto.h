#ifndef LORIKEET_CLORIKEETPROTO_H
#define LORIKEET_CLORIKEETPROTO_H
// Umbrella header for the protobuf-c code generated from proto/ by bin/gen-proto.
#include <protobuf-c/protobuf-c.h>
#include "lorikeet/v1/common.pb-c.h"
#include "lorikeet/v1/control.pb-c.h"
#include "lorikeet/v1/admin.pb-c.h"
#include "lorikeet/v1/engine.pb-c.h"
#include "lorikeet/v1/cluster.pb-c.h"

// Addresses of the descriptors that are encoded or decoded at the top level.
// (Swift imports C `extern const` globals by value; these return the real address.)
const ProtobufCMessageDescriptor *lorikeet_control_envelope_descriptor(void);
const ProtobufCMessageDescriptor *lorikeet_admin_envelope_descriptor(void);
const ProtobufCMessageDescriptor *lorikeet_engine_envelope_descriptor(void);
const ProtobufCMessageDescriptor *lorikeet_adapter_table_descriptor(void);
const ProtobufCMessageDescriptor *lorikeet_cluster_envelope_descriptor(void);
const ProtobufCMessageDescriptor *lorikeet_adapter_descriptor(void);
const ProtobufCMessageDescriptor *lorikeet_node_status_descriptor(void);
#endif
