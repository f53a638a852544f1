import LorikeetProto
import LorikeetTestSupport
import Testing

@testable import LorikeetWorker

@Suite("Request guards (Host, media type, Bearer) and path policy", .ownThreads)
struct RequestGuardTests {
    @Test(
        "Host: loopback names and addresses pass, anything else needs --allowed-hosts",
        arguments: [
            ("localhost", true), ("localhost:8000", true), ("LOCALHOST.", true), ("api.localhost:1", true),
            ("127.0.0.1", true), ("127.1.2.3:80", true), ("[::1]:8000", true), ("::1", true),
            ("evil.example", false), ("evil.example:8000", false), ("127.0.0.1.evil.example", false),
            ("localhost.evil.example", false), ("127.0.0.256x", false), ("[::2]:80", false), ("0.0.0.0", false),
        ])
    func host(_ host: String, _ allowed: Bool) {
        #expect(RequestGuards.hostAllowed(host, allowed: []) == allowed)
    }

    @Test("--allowed-hosts adds names (any case, any port); * allows all; no Host header is allowed")
    func allowedHosts() {
        #expect(RequestGuards.hostAllowed("Proxy.Example:443", allowed: ["proxy.example"]))
        #expect(!RequestGuards.hostAllowed("other.example", allowed: ["proxy.example"]))
        #expect(RequestGuards.hostAllowed("anything", allowed: ["*"]))
        #expect(RequestGuards.hostAllowed(nil, allowed: []))
    }

    @Test(
        "only application/json bodies pass",
        arguments: [
            ("application/json", true), ("Application/JSON; charset=utf-8", true), (" application/json ;x=y", true),
            ("text/plain", false), ("application/x-www-form-urlencoded", false), ("multipart/form-data", false),
            ("application/jsonp", false), ("", false),
        ])
    func mediaType(_ value: String, _ json: Bool) {
        #expect(RequestGuards.isJSON(value) == json)
    }

    @Test("Bearer scheme is case-insensitive; other schemes give no token")
    func bearer() {
        #expect(RequestGuards.bearerToken("Bearer abc") == "abc")
        #expect(RequestGuards.bearerToken("bearer abc") == "abc")
        #expect(RequestGuards.bearerToken("BEARER  abc ") == "abc")
        #expect(RequestGuards.bearerToken("Basic abc") == "")
        #expect(RequestGuards.bearerToken("Bearerabc") == "")
        #expect(RequestGuards.bearerToken(nil) == "")
    }

    @Test("lexical normalization applies . and .. without touching the disk; climbing above / is nil")
    func lexical() {
        #expect(PathPolicy.lexicallyNormalized("/a/./b//c/") == "/a/b/c")
        #expect(PathPolicy.lexicallyNormalized("/a/b/../../etc") == "/etc")
        #expect(PathPolicy.lexicallyNormalized("/a/../..") == nil)
        #expect(PathPolicy.lexicallyNormalized("/") == "/")
    }

    @Test(
        "adapter request rules: name, path and base model limits at the edge",
        arguments: [
            (String(repeating: "n", count: 257), "/p", "", "lora_name"),
            ("ok", "/" + String(repeating: "p", count: 4096), "", "lora_path"),
            ("ok", "/p\u{0}/x", "", "lora_path"),
            ("ok", "/p", String(repeating: "b", count: 257), "base_model_name"),
            ("", "/p", "", "lora_name"),
        ])
    func adapterRules(_ name: String, _ path: String, _ base: String, _ param: String) {
        let request = LoadAdapterRequest(name: name, path: path, baseModel: base)
        #expect(throws: Status.self) { try AdapterRequestRules.check(request) }
        do {
            try AdapterRequestRules.check(request)
        } catch {
            #expect(error.param == param)
            #expect(error.code == .invalidArgument)
        }
    }
}
