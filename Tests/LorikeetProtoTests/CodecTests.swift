import LorikeetProto
import Testing

@Suite("Protobuf codec round trips")
struct CodecTests {
    @Test("control envelope with every field set", arguments: Samples.controlEnvelopes)
    func controlRoundTrip(_ envelope: ControlEnvelope) throws {
        let decoded = try ControlEnvelope(serializedBytes: envelope.serializedBytes())
        #expect(decoded == envelope)
    }

    @Test("admin envelope with every field set", arguments: Samples.adminEnvelopes)
    func adminRoundTrip(_ envelope: AdminEnvelope) throws {
        #expect(try AdminEnvelope(serializedBytes: envelope.serializedBytes()) == envelope)
    }

    @Test("engine envelope with every field set", arguments: Samples.engineEnvelopes)
    func engineRoundTrip(_ envelope: EngineEnvelope) throws {
        #expect(try EngineEnvelope(serializedBytes: envelope.serializedBytes()) == envelope)
    }

    @Test("cluster envelope with every field set", arguments: Samples.clusterEnvelopes)
    func clusterRoundTrip(_ envelope: ClusterEnvelope) throws {
        #expect(try ClusterEnvelope(serializedBytes: envelope.serializedBytes()) == envelope)
    }

    @Test("an adapter record and a node status round trip on their own (etcd values)")
    func etcdValues() throws {
        #expect(try AdapterRecord(serializedBytes: Samples.adapter.serializedBytes()) == Samples.adapter)
        let node = NodeStatus(name: "n", appliedRevision: 3, state: "ready", version: "v", startedUnixMs: 4, leaseID: 5)
        #expect(try NodeStatus(serializedBytes: node.serializedBytes()) == node)
    }

    @Test("messages with default values round trip and encode compactly")
    func defaults() throws {
        let control: [ControlEnvelope.Body] = [
            .hello(Hello()), .ready(Ready()), .heartbeat(Heartbeat()), .role(RoleAssignment()),
            .snapshot(TableSnapshot()), .change(TableChange()), .changeAck(TableChangeAck()),
            .load(LoadAdapterRequest(name: "", path: "", originSlot: 0)), .unload(UnloadAdapterRequest(name: "", originSlot: 0)),
            .mutationReply(AdapterMutationReply()), .commit(CommitRequest()), .commitReply(CommitReply()),
            .drain(Drain()), .shutdown(Shutdown()),
        ]
        for body in control {
            let envelope = ControlEnvelope(body: body)
            #expect(try ControlEnvelope(serializedBytes: envelope.serializedBytes()) == envelope)
        }
        let engine = EngineEnvelope(body: .generate(GenerateRequest(requestID: "")))
        #expect(try EngineEnvelope(serializedBytes: engine.serializedBytes()) == engine)
        // An empty envelope is zero bytes on the wire, as protobuf requires.
        #expect(ControlEnvelope(body: nil).serializedBytes().isEmpty)
        #expect(try ControlEnvelope(serializedBytes: []) == ControlEnvelope(body: nil))
    }

    @Test("the adapter table (state file content) round trips")
    func table() throws {
        #expect(try AdapterTable(serializedBytes: Samples.table.serializedBytes()) == Samples.table)
        #expect(try AdapterTable(serializedBytes: AdapterTable().serializedBytes()) == AdapterTable())
    }

    @Test(
        "bytes that are not a message are rejected with a typed error",
        arguments: [
            [0xFF] as [UInt8],  // field 31, wire type 7 (invalid)
            [0x52, 0x05, 0x01],  // length-delimited field claiming 5 bytes, 1 present
            [0x08],  // varint field with no value
            [0x08, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF],  // varint too long
        ]
    )
    func garbage(_ bytes: [UInt8]) {
        #expect(throws: ProtoDecodingError.self) { try ControlEnvelope(serializedBytes: bytes) }
        #expect(throws: ProtoDecodingError.self) { try AdminEnvelope(serializedBytes: bytes) }
        #expect(throws: ProtoDecodingError.self) { try EngineEnvelope(serializedBytes: bytes) }
    }

    @Test("an unknown enum value is reported, not trusted")
    func unknownRole() throws {
        // role = 13 { role = 7 }
        let bytes: [UInt8] = [0x6A, 0x02, 0x08, 0x07]
        #expect(throws: ProtoDecodingError.invalidValue(field: "role", reason: "unknown role 7")) {
            try ControlEnvelope(serializedBytes: bytes)
        }
    }

    @Test("unknown fields from a newer peer are skipped")
    func unknownFields() throws {
        // call_id = 5, then field 99 (varint) = 1
        let bytes: [UInt8] = [0x08, 0x05, 0x98, 0x06, 0x01]
        #expect(try ControlEnvelope(serializedBytes: bytes).callID == 5)
    }
}
