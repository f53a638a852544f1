import Foundation
import LorikeetJSON
import LorikeetTestSupport
import Testing

@testable import LorikeetCluster

/// Pure tests of the gateway encoding: base64, endpoints, prefix ranges, error mapping.
@Suite(.ownThreads) struct EtcdCodecTests {
    @Test(arguments: 0..<12)
    func base64MatchesFoundation(length: Int) {
        let bytes = (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 250) }
        let encoded = Base64.encode(bytes)
        #expect(encoded == Data(bytes).base64EncodedString())
        #expect(Base64.decode(encoded) == bytes)
    }

    @Test(arguments: ["Zg", "Zg=", "Zm9v!", "Zh==", "Zm9=", "=Zm9", "Zg==Zg==", "Z===", "Zm 9v"])
    func base64RefusesNonCanonical(text: String) {
        #expect(Base64.decode(text) == nil)
    }

    @Test(arguments: [
        ("127.0.0.1:2379", "127.0.0.1", 2379), ("http://etcd-0:2379", "etcd-0", 2379),
        ("http://etcd-0:2379/", "etcd-0", 2379), ("[::1]:2379", "::1", 2379), ("http://[fe80::1]:1", "fe80::1", 1),
    ])
    func endpointParses(text: String, host: String, port: Int) throws {
        let endpoint = try EtcdEndpoint(parsing: text)
        #expect(endpoint.host == host && endpoint.port == port)
    }

    @Test(arguments: ["etcd", "https://etcd:2379", ":2379", "etcd:0", "etcd:70000", "etcd:x", "[::1]2379", "http://a/b:1"])
    func endpointRefused(text: String) {
        #expect(throws: EtcdError.self) { try EtcdEndpoint(parsing: text) }
    }

    @Test func prefixRangeEnd() {
        #expect("/a/".prefixRangeEnd == Array("/a0".utf8))
        #expect("".prefixRangeEnd == [0])
    }

    @Test("a revision a store never reaches (Int64.max: 'watch from revision + 1' would trap) or below 0 is a bad response")
    func revisionsOutOfRange() throws {
        for revision in ["9223372036854775807", "-1"] {
            let header = try JSONParser.parse(Array(#"{"header": {"revision": "\#(revision)"}}"#.utf8))
            #expect(throws: EtcdError.self) { try EtcdJSON.revision(header) }
            let kv = try JSONParser.parse(Array(#"{"key": "YQ==", "mod_revision": "\#(revision)"}"#.utf8))
            #expect(throws: EtcdError.self) { try EtcdJSON.keyValue(kv) }
        }
        let fine = try JSONParser.parse(Array(#"{"header": {"revision": "9223372036854775806"}}"#.utf8))
        #expect(try EtcdJSON.revision(fine) == Int64.max - 1)
    }

    @Test func errorMapping() {
        #expect(EtcdJSON.error(code: 14, message: "etcdserver: no leader", path: "/v3/kv/put") == .unavailable("etcdserver: no leader"))
        #expect(
            EtcdJSON.error(code: 5, message: "etcdserver: requested lease not found", path: "/v3/lease/revoke", leaseID: 7)
                == .leaseNotFound(id: 7))
        #expect(
            EtcdJSON.error(code: 11, message: "etcdserver: mvcc: required revision has been compacted", path: "/v3/kv/range", revision: 3)
                == .compacted(revision: 3))
        #expect(
            EtcdJSON.error(code: 3, message: "etcdserver: duplicate key given in txn request", path: "/v3/kv/txn")
                == .txnFailed("etcdserver: duplicate key given in txn request"))
        #expect(
            EtcdJSON.error(code: 4, message: "context deadline exceeded", path: "/v3/kv/range") == .timeout("context deadline exceeded"))
    }
}
