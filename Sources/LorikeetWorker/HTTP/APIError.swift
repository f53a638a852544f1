package import HTTPTypes
package import LorikeetJSON
package import LorikeetProto

/// An error that reaches an HTTP client, rendered as OpenAI's error envelope
/// `{"error": {"message", "type", "param", "code"}}` with the types vLLM's Rust frontend
/// uses: `invalid_request_error`, `model_not_found`, `server_error` (plus
/// `authentication_error` for 401, as OpenAI does).
package struct APIError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The envelope's `type`.
    package struct Kind: Sendable, Hashable, CustomStringConvertible {
        package let rawValue: String
        package init(rawValue: String) { self.rawValue = rawValue }
        package static let invalidRequest = Kind(rawValue: "invalid_request_error")
        package static let modelNotFound = Kind(rawValue: "model_not_found")
        package static let serverError = Kind(rawValue: "server_error")
        package static let authentication = Kind(rawValue: "authentication_error")
        package var description: String { self.rawValue }
    }

    package var status: HTTPResponse.Status
    package var kind: Kind
    package var message: String
    /// The request field at fault (`null` when none).
    package var param: String?
    /// A machine-readable code (`null` when none).
    package var code: String?

    package init(status: HTTPResponse.Status, kind: Kind, message: String, param: String? = nil, code: String? = nil) {
        self.status = status
        self.kind = kind
        self.message = message
        self.param = param
        self.code = code
    }

    package var description: String { "\(self.status.code) \(self.kind): \(self.message)" }

    /// 400 `invalid_request_error`.
    package static func invalidRequest(_ message: String, param: String? = nil) -> APIError {
        APIError(status: .badRequest, kind: .invalidRequest, message: message, param: param)
    }

    /// 404 `model_not_found` for a `model` that is neither a base model nor a loaded adapter.
    package static func modelNotFound(_ model: String, param: String = "model") -> APIError {
        APIError(
            status: .notFound, kind: .modelNotFound, message: "The model `\(model.echoed())` does not exist.", param: param,
            code: "model_not_found"
        )
    }

    /// 404 for an unknown route (also the answer for the adapter routes when runtime updating is off).
    package static func routeNotFound(_ method: HTTPRequest.Method, _ path: String) -> APIError {
        APIError(status: .notFound, kind: .invalidRequest, message: "No route for \(method) \(path.echoed(limit: 128))", code: "not_found")
    }

    /// Maps a channel `Status` (engine, leader, supervisor) to an HTTP error.
    package init(_ status: Status) {
        let param = status.param.isEmpty ? nil : status.param
        switch status.code {
        case .invalidArgument, .alreadyExists, .outOfRange, .failedPrecondition:
            self.init(status: .badRequest, kind: .invalidRequest, message: status.message, param: param)
        case .notFound:
            self.init(status: .notFound, kind: .modelNotFound, message: status.message, param: param, code: "model_not_found")
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

    /// The JSON envelope.
    package var json: JSONValue {
        .object([
            (
                "error",
                .object([
                    ("message", .string(self.message)),
                    ("type", .string(self.kind.rawValue)),
                    ("param", self.param.map { .string($0) } ?? .null),
                    ("code", self.code.map { .string($0) } ?? .null),
                ])
            )
        ])
    }
}
