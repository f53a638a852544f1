package import HTTPTypes
package import LorikeetJSON
package import LorikeetProto

/// An error that reaches an HTTP client, rendered as OpenAI's error envelope
/// `{"error": {"message", "type", "param", "code"}}` exactly as vLLM's Rust frontend
/// renders it (`rust/src/server/src/error.rs`): `type` is `invalid_request_error` for
/// every 4xx (plus `authentication_error` for 401, as OpenAI does) and `server_error` for
/// every 5xx, and `code` is always a string (`invalid_request_error`, `model_not_found`,
/// `json_parse_error`, `server_error`, or one of Lorikeet's codes for statuses the Rust
/// frontend never answers: see `docs/vllm-compat.md`).
///
/// This is the one place errors are built: routes throw the static constructors below,
/// or an `APIError(Status)` for a status that crossed a channel.
package struct APIError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The envelope's `type`.
    package struct Kind: Sendable, Hashable, CustomStringConvertible {
        package let rawValue: String
        package init(rawValue: String) { self.rawValue = rawValue }
        package static let invalidRequest = Kind(rawValue: "invalid_request_error")
        package static let serverError = Kind(rawValue: "server_error")
        package static let authentication = Kind(rawValue: "authentication_error")
        package var description: String { self.rawValue }
    }

    package var status: HTTPResponse.Status
    package var kind: Kind
    package var message: String
    /// The request field at fault (`null` when none).
    package var param: String?
    /// The machine-readable code (always set; see `defaultCode(for:)`).
    package var code: String
    /// The methods a route accepts, sent as `Allow` with a 405.
    package var allow: String?

    /// An error; without `code`, the status's default code (`defaultCode(for:)`).
    package init(status: HTTPResponse.Status, kind: Kind, message: String, param: String? = nil, code: String? = nil) {
        self.status = status
        self.kind = kind
        self.message = message
        self.param = param
        self.code = code ?? Self.defaultCode(for: status)
    }

    package var description: String { "\(self.status.code) \(self.kind): \(self.message)" }

    /// The code of an error that names none: the Rust frontend's `invalid_request_error`
    /// (400) and `server_error` (500), and Lorikeet's codes for the statuses vLLM does not
    /// answer itself.
    package static func defaultCode(for status: HTTPResponse.Status) -> String {
        switch status.code {
        case 400: "invalid_request_error"
        case 401: "invalid_api_key"
        case 403: "forbidden"
        case 404: "not_found"
        case 405: "method_not_allowed"
        case 408: "timeout"
        case 413: "request_too_large"
        case 415: "unsupported_media_type"
        case 429: "rate_limit_exceeded"
        case 502: "bad_gateway"
        case 503: "service_unavailable"
        case 504: "timeout"
        case 400..<500: "invalid_request_error"
        default: "server_error"
        }
    }

    /// 400 `invalid_request_error` / `invalid_request_error` (Rust `InvalidRequest`): a
    /// semantic check of a well-typed request.
    package static func invalidRequest(_ message: String, param: String? = nil) -> APIError {
        APIError(status: .badRequest, kind: .invalidRequest, message: message, param: param, code: "invalid_request_error")
    }

    /// 400 `invalid_request_error` / `json_parse_error` (Rust `JsonParseError`): the body is
    /// not JSON, not an object, lacks a required field or has a field of the wrong JSON
    /// type. Unlike the Rust frontend (`param: null`), `param` names the field when one is
    /// at fault.
    package static func jsonParse(_ message: String, param: String? = nil) -> APIError {
        APIError(status: .badRequest, kind: .invalidRequest, message: message, param: param, code: "json_parse_error")
    }

    /// 404 `invalid_request_error` / `model_not_found`, param `model` (Rust `ModelNotFound`):
    /// a `model` that is neither a base model nor a loaded adapter, and (as the Rust
    /// frontend answers it) the unload of an adapter that is not loaded.
    package static func modelNotFound(_ model: String) -> APIError {
        APIError(
            status: .notFound, kind: .invalidRequest, message: "The model `\(model.echoed())` does not exist.", param: "model",
            code: "model_not_found")
    }

    /// 500 `server_error` / `server_error` (Rust `ServerError`).
    package static func serverError(_ message: String) -> APIError {
        APIError(status: .internalServerError, kind: .serverError, message: message, code: "server_error")
    }

    /// 404 for an unknown route (also the answer for the adapter routes when runtime
    /// updating is off). vLLM answers these with an empty (Rust) or `{"detail"}` (Python)
    /// body; Lorikeet keeps the envelope.
    package static func routeNotFound(_ method: HTTPRequest.Method, _ path: String) -> APIError {
        APIError(status: .notFound, kind: .invalidRequest, message: "No route for \(method) \(path.echoed(limit: 128))", code: "not_found")
    }

    /// 405 naming the methods `path` accepts (the reply carries them as `Allow`, as axum
    /// and FastAPI do).
    package static func methodNotAllowed(
        _ method: HTTPRequest.Method, _ path: String, allowed: [HTTPRequest.Method]
    ) -> APIError {
        var error = APIError(
            status: .methodNotAllowed, kind: .invalidRequest, message: "Method \(method) is not allowed on \(path.echoed(limit: 128)).",
            code: "method_not_allowed")
        error.allow = allowed.map(\.rawValue).joined(separator: ", ")
        return error
    }

    /// Maps a channel `Status` (engine, leader, supervisor) to an HTTP error. NOT_FOUND is
    /// a plain 404 `not_found` here: a route that knows the missing thing is a model (an
    /// unload, a generation's adapter) builds `modelNotFound` itself.
    package init(_ status: Status) {
        let param = status.param.isEmpty ? nil : status.param
        switch status.code {
        case .invalidArgument, .alreadyExists, .outOfRange, .failedPrecondition:
            self.init(status: .badRequest, kind: .invalidRequest, message: status.message, param: param)
        case .notFound:
            self.init(status: .notFound, kind: .invalidRequest, message: status.message, param: param)
        case .permissionDenied:
            self.init(status: .forbidden, kind: .invalidRequest, message: status.message, param: param)
        case .resourceExhausted:
            self.init(status: .tooManyRequests, kind: .serverError, message: status.message, param: param)
        case .unavailable:
            self.init(status: .serviceUnavailable, kind: .serverError, message: status.message, param: param)
        case .deadlineExceeded:
            self.init(status: .gatewayTimeout, kind: .serverError, message: status.message, param: param)
        case .ok, .cancelled, .unknown, .aborted, .unimplemented, .internal:
            self.init(status: .internalServerError, kind: .serverError, message: status.message, param: param)
        }
    }

    /// The error of a failed `/v1/load_lora_adapter` (the leader's `Status`), as the Rust
    /// frontend words it where the leader's check is the same (`routes/lora.rs`,
    /// `load_lora_api_error`): an adapter already loaded (ALREADY_EXISTS) gets
    /// `LoadLoraError::AlreadyLoaded`'s message. Files that are missing (NOT_FOUND: no
    /// `adapter_config.json`, no weights) or unusable (INVALID_ARGUMENT) are the client's
    /// path: 400 with param `lora_path` (compat L12), never the 404 of a missing route.
    package static func loadAdapter(_ name: String, _ status: Status) -> APIError {
        switch status.code {
        case .alreadyExists:
            return .invalidRequest(
                "LoRA adapter `\(name.echoed())` is already loaded. If you want to load the adapter in place, set 'load_inplace' to true.",
                param: "lora_name")
        case .notFound, .invalidArgument:
            return .invalidRequest(status.message, param: status.param.isEmpty ? "lora_path" : status.param)
        default:
            return APIError(status)
        }
    }

    /// The error of a failed `/v1/unload_lora_adapter` (the leader's `Status`), as the Rust
    /// frontend answers it (`routes/lora.rs`, `unload_lora_api_error`): an adapter that is
    /// not loaded (NOT_FOUND) is `ModelNotFound` (404, param `model`); an engine that
    /// refuses the removal is a 500 `server_error`.
    package static func unloadAdapter(_ name: String, _ status: Status) -> APIError {
        switch status.code {
        case .notFound: return .modelNotFound(name)
        default: return APIError(status)
        }
    }

    /// The JSON envelope.
    package var json: JSONValue {
        .object([
            (
                "error",
                .object([
                    ("message", .string(self.message)),
                    ("type", .string(self.kind.rawValue)),
                    ("param", self.param.map { .string($0) } ?? .null),
                    ("code", .string(self.code)),
                ])
            )
        ])
    }
}
