import HTTPTypes
import HummingbirdCore
import Logging
import LorikeetJSON
import LorikeetProto
import NIOCore

extension WorkerRoutes {
    /// The upstream answer's replica, for clients and tests (`X-Lorikeet-Upstream`).
    static let upstreamHeader = HTTPField.Name("X-Lorikeet-Upstream")!

    /// Completions and chat completions in front of upstream replicas: `model` is resolved
    /// against our adapter table (404 for a name it does not hold, exactly as with the
    /// built-in engine), then the client's body goes to a replica (with `model` in the
    /// replica's naming) and the replica's answer comes back unchanged: a JSON body whole
    /// (at most `Limits.upstreamBodyBytes`, else 502), an SSE stream chunk by chunk as the
    /// replica flushes it, read from the replica only as fast as the client takes it. A
    /// client that disconnects mid-stream closes the upstream request, which makes the
    /// replica abort it.
    func forward(
        _ bytes: [UInt8], _ body: JSONValue, path: String, to upstream: any PassthroughBackend, requestID: String,
        logger: Logger
    ) async throws -> Reply {
        let (_, resolved) = try self.resolveModel(try RequestValidation.optionalString(body, "model"))
        var logger = logger
        if let adapter = resolved.adapter { logger[metadataKey: "adapter.name"] = "\(adapter.name)" }
        let response = try await upstream.forward(
            ForwardedRequest(
                path: path, body: bytes, json: body, baseModel: resolved.base, adapter: resolved.adapter, requestID: requestID))
        return try await self.relay(response, logger: logger)
    }

    /// A route Lorikeet does not serve itself, in upstream mode (`/v1/embeddings`,
    /// `/v1/responses`, `/score`, `/tokenize`, ...): the client's method, path, query and
    /// body (already read within the body limit, and behind `--api-key` for `/v1/*`) go to
    /// a replica and its answer comes back as for completions. A JSON object body that
    /// names a `model` is resolved first (404 `model_not_found` for a name the table does
    /// not hold, the replica's naming for an adapter, a replica holding it); any other body
    /// goes byte for byte.
    func passthrough(
        _ request: Request, bytes: [UInt8], json: JSONValue?, to upstream: any PassthroughBackend, requestID: String,
        logger: Logger
    ) async throws -> Reply {
        var parsed = json
        if parsed == nil, RequestGuards.isJSON(request.headers[.contentType]),
            let value = try? JSONParser.parse(bytes, maximumValues: Limits.jsonValues), case .object = value
        {
            parsed = value
        }
        var base = self.replica.baseModels.first ?? ""
        var adapter: AdapterRecord?
        var rewritesModel = false
        if let parsed, let model = parsed["model"], model != .null {
            let (_, resolved) = try self.resolveModel(try RequestValidation.optionalString(parsed, "model"))
            (base, adapter, rewritesModel) = (resolved.base, resolved.adapter, true)
        }
        var logger = logger
        if let adapter { logger[metadataKey: "adapter.name"] = "\(adapter.name)" }
        var forwarded = ForwardedRequest(
            path: request.uri.query.map { request.uri.path + "?" + $0 } ?? request.uri.path, body: bytes, json: parsed ?? .null,
            baseModel: base, adapter: adapter, requestID: requestID)
        forwarded.method = request.method.rawValue
        forwarded.contentType = request.headers[.contentType]
        forwarded.rewritesModel = rewritesModel
        let response = try await upstream.forward(forwarded)
        return try await self.relay(response, logger: logger)
    }

    /// A replica's answer to the client: a JSON body whole, an SSE stream chunk by chunk.
    private func relay(_ response: any ForwardedResponse, logger: Logger) async throws -> Reply {
        var headers = HTTPFields()
        headers[.contentType] = response.contentType
        headers[Self.upstreamHeader] = response.replica
        let status = HTTPResponse.Status(code: response.status)
        guard response.contentType.lowercased().hasPrefix("text/event-stream") else {
            let whole: ByteBuffer
            do {
                whole = try await response.collect()
            } catch {
                logger.warning("upstream answer not relayed", metadata: ["upstream": "\(response.replica)", "error": "\(error.message)"])
                throw error
            }
            return Reply(status: status, headers: headers, body: ResponseBody(byteBuffer: whole))
        }
        headers[.cacheControl] = "no-cache"
        let streamLogger = logger
        let streamed = ResponseBody { writer in
            while true {
                let chunk: ByteBuffer?
                do throws(APIError) {
                    chunk = try await response.next()
                } catch {
                    // The replica failed mid-stream: tell the client in the stream, as vLLM does.
                    streamLogger.warning(
                        "upstream failed mid-stream", metadata: ["upstream": "\(response.replica)", "error": "\(error.message)"])
                    var event = ByteBuffer(string: "data: ")
                    event.writeBytes(JSONWriter.encode(error.json))
                    event.writeString("\n\n")
                    try? await writer.write(event)
                    break
                }
                guard let chunk else { break }
                do {
                    try await writer.write(chunk)
                } catch {
                    streamLogger.info(
                        "client disconnected mid-stream; closing the upstream request", metadata: ["upstream": "\(response.replica)"])
                    response.cancel()
                    throw error
                }
            }
            try await writer.finish(nil)
        }
        // Whatever happens to the write (a client gone before the body started), the
        // upstream request ends with it: `cancel()` after the end does nothing.
        return Reply(status: status, headers: headers, body: streamed, release: { response.cancel() })
    }
}
