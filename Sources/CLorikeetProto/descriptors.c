#include "CLorikeetProto.h"

const ProtobufCMessageDescriptor *lorikeet_control_envelope_descriptor(void) {
    return &lorikeet__v1__control_envelope__descriptor;
}
const ProtobufCMessageDescriptor *lorikeet_admin_envelope_descriptor(void) {
    return &lorikeet__v1__admin_envelope__descriptor;
}
const ProtobufCMessageDescriptor *lorikeet_engine_envelope_descriptor(void) {
    return &lorikeet__v1__engine_envelope__descriptor;
}
const ProtobufCMessageDescriptor *lorikeet_adapter_table_descriptor(void) {
    return &lorikeet__v1__adapter_table__descriptor;
}
const ProtobufCMessageDescriptor *lorikeet_cluster_envelope_descriptor(void) {
    return &lorikeet__v1__cluster_envelope__descriptor;
}
const ProtobufCMessageDescriptor *lorikeet_adapter_descriptor(void) {
    return &lorikeet__v1__adapter__descriptor;
}
const ProtobufCMessageDescriptor *lorikeet_node_status_descriptor(void) {
    return &lorikeet__v1__node_status__descriptor;
}
