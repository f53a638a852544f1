/// An error that crosses the engine boundary (to the engine server, and from there to
/// a worker as a gRPC status).
///
/// The set of failure kinds grows with the engine, so this is a struct with a `Code`
/// (like grpc-swift's `RPCError`) rather than an enum. The specific loaders throw
/// closed enums (`SafetensorsError`, `ModelLoadError`, `AdapterLoadError`) that convert
/// into this type with the right code.
package struct EngineError: Error, Equatable, CustomStringConvertible, Sendable {
    /// The failure category; each maps to one gRPC status code.
    package struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Wrapped: Hashable, Sendable {
            case invalidArgument, notFound, alreadyExists, failedPrecondition
            case resourceExhausted, unavailable, `internal`
        }
        private let wrapped: Wrapped
        private init(_ wrapped: Wrapped) { self.wrapped = wrapped }

        /// The request or the adapter is malformed (gRPC INVALID_ARGUMENT, 3).
        package static let invalidArgument = Code(.invalidArgument)
        /// The referenced adapter or request does not exist (gRPC NOT_FOUND, 5).
        package static let notFound = Code(.notFound)
        /// The adapter id or name is already in use (gRPC ALREADY_EXISTS, 6).
        package static let alreadyExists = Code(.alreadyExists)
        /// Refused because of the engine state, e.g. a stale epoch (gRPC FAILED_PRECONDITION, 9).
        package static let failedPrecondition = Code(.failedPrecondition)
        /// No adapter slot can be freed (gRPC RESOURCE_EXHAUSTED, 8).
        package static let resourceExhausted = Code(.resourceExhausted)
        /// The engine is shutting down (gRPC UNAVAILABLE, 14).
        package static let unavailable = Code(.unavailable)
        /// A bug or an unexpected I/O failure (gRPC INTERNAL, 13).
        package static let `internal` = Code(.internal)

        /// The numeric gRPC status code.
        package var grpcStatusCode: Int {
            switch self.wrapped {
            case .invalidArgument: 3
            case .notFound: 5
            case .alreadyExists: 6
            case .resourceExhausted: 8
            case .failedPrecondition: 9
            case .internal: 13
            case .unavailable: 14
            }
        }

        package var description: String {
            switch self.wrapped {
            case .invalidArgument: "invalid argument"
            case .notFound: "not found"
            case .alreadyExists: "already exists"
            case .failedPrecondition: "failed precondition"
            case .resourceExhausted: "resource exhausted"
            case .unavailable: "unavailable"
            case .internal: "internal"
            }
        }
    }

    /// The failure category.
    package var code: Code
    /// A human-readable message, suitable for an API error body.
    package var message: String
    /// What the client must not see but the operator needs (paths outside the request,
    /// symlink targets, errno): the engine server logs it. Not part of equality.
    package var logDetail: String?
    /// The request field at fault (OpenAI's `param`), when there is one.
    package var param: String?

    /// Creates an error with a code, a message, the field at fault and (for the log
    /// only) a detail.
    package init(_ code: Code, _ message: String, param: String? = nil, logDetail: String? = nil) {
        self.code = code
        self.message = message
        self.param = param
        self.logDetail = logDetail
    }

    package static func == (lhs: EngineError, rhs: EngineError) -> Bool {
        lhs.code == rhs.code && lhs.message == rhs.message
    }

    package var description: String { "\(self.code): \(self.message)" }
}
