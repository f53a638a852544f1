import Logging
import LorikeetJSON
import LorikeetLimits
import NIOCore
import NIOHTTP1

extension EtcdClient {
    /// Every change to keys starting with `prefix`, from `fromRevision` (nil = changes after
    /// now), as a stream. See `watch(prefix:fromRevision:onEvent:)` for the guarantees; the
    /// stream ends with `EtcdError.compacted` (reload with a range, then watch from its
    /// revision + 1), `.shutdown`, or when the consumer stops iterating. Events are buffered
    /// without bound while the consumer is slower than etcd: for high-volume prefixes use
    /// the `onEvent` form, which reads from etcd only as fast as it is consumed.
    package func watch(prefix: String, fromRevision: Int64? = nil) -> AsyncThrowingStream<EtcdWatchEvent, any Error> {
        let (stream, continuation) = AsyncThrowingStream.makeStream(of: EtcdWatchEvent.self)
        // The producer lives exactly as long as the stream: cancelled when the consumer
        // drops the stream or stops iterating (onTermination).
        let task = Task {
            do throws(EtcdError) {
                try await self.watch(prefix: prefix, fromRevision: fromRevision) { continuation.yield($0) }
            } catch {
                continuation.finish(throwing: error)
            }
        }
        continuation.onTermination = { _ in task.cancel() }
        return stream
    }

    /// Calls `onEvent` for every change to keys starting with `prefix`, in revision order,
    /// from `fromRevision` (nil = changes after now), until the task is cancelled
    /// (`.cancelled`), the client shuts down (`.shutdown`), the history needed was
    /// compacted (`.compacted(compactRevision)`), or a failure that another member would
    /// repeat (`.responseTooLarge`, `.badResponse`, `.rejected`).
    ///
    /// When the connection drops, the member stops answering progress requests
    /// (`Options.watchIdleTimeout`), or the member loses its leader (the watch is opened with
    /// `hasleader` metadata, so etcd cancels it), the watch resumes on the next member from
    /// the last delivered revision + 1: no event is lost or repeated. While no member can
    /// serve it (quorum lost), it keeps retrying with a backoff up to
    /// `Options.watchMaxBackoff`; it never gives up by itself.
    package func watch(
        prefix: String, fromRevision: Int64? = nil, onEvent: (EtcdWatchEvent) async -> Void
    ) async throws(EtcdError) -> Never {
        var next = fromRevision
        var index = self.preferredIndex
        var failures = 0
        while true {
            if Task.isCancelled { throw .cancelled }
            if self.isShutdown { throw .shutdown }
            let endpoint = self.endpoints[index % self.endpoints.count]
            var established = false
            do {
                try await self.watchOnce(endpoint, prefix: prefix, next: &next, established: &established, onEvent: onEvent)
            } catch {
                // Member trouble is retried on the next member; anything else would fail
                // the same way again (a message over the size cap, a refused request).
                switch error {
                case .unreachable, .timeout, .unavailable, .outcomeUnknown: break
                case .compacted, .cancelled, .shutdown, .badResponse, .responseTooLarge, .rejected, .txnFailed,
                    .leaseNotFound, .invalidArgument:
                    throw error
                }
                if Task.isCancelled { throw .cancelled }
                if established { failures = 0 }
                failures += 1
                let resume = next.map { "revision \($0)" } ?? "now"
                self.logger.log(
                    level: failures == 1 ? .warning : .debug, "etcd watch interrupted; resuming on the next member",
                    metadata: [
                        "etcd.endpoint": "\(endpoint)", "etcd.prefix": "\(prefix)", "etcd.resume_from": "\(resume)",
                        "error": "\(error)",
                    ])
            }
            index += 1
            if failures >= self.endpoints.count {
                // Every member failed in a row: back off (100 ms doubling, capped).
                let exponent = min(failures - self.endpoints.count, 5)
                let pause = min(Duration.milliseconds(100 << exponent), self.options.watchMaxBackoff)
                do { try await Task.sleep(for: pause) } catch { throw .cancelled }
            }
        }
    }

    /// One watch stream on one member; returns only by throwing. Advances `next` past
    /// every event delivered; sets `established` once etcd confirmed the watch.
    private func watchOnce(
        _ endpoint: EtcdEndpoint, prefix: String, next: inout Int64?, established: inout Bool,
        onEvent: (EtcdWatchEvent) async -> Void
    ) async throws(EtcdError) {
        let reason = CloseReason()
        let channel = try await EtcdTransport.connect(
            to: endpoint, group: self.group, timeout: self.options.connectTimeout,
            idle: (TimeAmount(self.options.watchIdleTimeout), reason))
        guard let id = self.register(channel.channel) else { throw .shutdown }
        defer { self.unregister(id) }
        var create = EtcdJSON.range(prefix, prefix: true)
        if let next { create.append(("start_revision", EtcdJSON.string(next))) }
        let createLine = JSONWriter.encode(.object([("create_request", .object(create))])) + [0x0A]
        let progressLine = JSONWriter.encode(.object([("progress_request", .object([]))])) + [0x0A]
        let interval = self.options.watchProgressInterval
        let limit = self.options.responseLimit
        var stream = WatchStreamState(endpoint: endpoint, next: next)
        do {
            try await channel.executeThenClose { inbound, outbound in
                try await outbound.write(.head(EtcdTransport.head(endpoint, path: "/v3/watch", contentLength: nil)))
                try await outbound.write(.body(.byteBuffer(ByteBuffer(bytes: createLine))))
                try await withThrowingTaskGroup(of: Void.self) { group in
                    // Progress requests keep the stream talking, so that silence means a
                    // frozen or partitioned member (ReadIdleCloser closes the connection).
                    group.addTask {
                        while true {
                            try await Task.sleep(for: interval)
                            try await outbound.write(.body(.byteBuffer(ByteBuffer(bytes: progressLine))))
                        }
                    }
                    defer { group.cancelAll() }
                    var pending = ByteBuffer()
                    // Bytes of `pending` already searched for a newline (a long message
                    // arriving in many chunks is scanned once, not once per chunk).
                    var scanned = 0
                    var status = 0
                    for try await part in inbound {
                        switch part {
                        case .head(let head):
                            status = Int(head.status.code)
                        case .body(var chunk):
                            pending.writeBuffer(&chunk)
                            guard status == 200 else {
                                if pending.readableBytes > limit { throw EtcdError.responseTooLarge(limit: limit) }
                                continue
                            }
                            while let newline = pending.readableBytesView.dropFirst(scanned).firstIndex(of: 0x0A) {
                                let line = pending.readBytes(length: newline - pending.readerIndex + 1) ?? []
                                scanned = 0
                                try await stream.handle(line, onEvent: onEvent)
                            }
                            scanned = pending.readableBytes
                            if pending.readableBytes > limit { throw EtcdError.responseTooLarge(limit: limit) }
                            pending.discardReadBytes()
                        case .end:
                            let rest = Array(pending.readableBytesView)
                            if status != 200 {
                                let json = try? JSONParser.parse(rest)
                                throw json.map { EtcdJSON.error($0, path: "/v3/watch", httpStatus: status) }
                                    ?? EtcdError.badResponse("HTTP \(status) from \(endpoint) for a watch")
                            }
                            if rest.contains(where: { $0 != 0x0A && $0 != 0x20 }) { try await stream.handle(rest, onEvent: onEvent) }
                            throw EtcdError.unavailable("\(endpoint) ended the watch stream")
                        }
                    }
                    throw EtcdError.unavailable("\(endpoint) closed the watch connection")
                }
            }
        } catch {
            next = stream.next
            established = stream.established
            if let closed = reason.error { throw closed }
            if Task.isCancelled { throw .cancelled }
            if self.isShutdown { throw .shutdown }
            if let error = error as? EtcdError { throw error }
            throw .unavailable("watch connection to \(endpoint) failed: \(error)")
        }
    }
}

/// What one watch stream has delivered: the revision to resume from.
private struct WatchStreamState {
    let endpoint: EtcdEndpoint
    var next: Int64?
    var established = false

    init(endpoint: EtcdEndpoint, next: Int64?) {
        self.endpoint = endpoint
        self.next = next
    }

    /// Handles one message of the stream (`{"result": WatchResponse}` or `{"error": ...}`).
    mutating func handle(_ line: [UInt8], onEvent: (EtcdWatchEvent) async -> Void) async throws(EtcdError) {
        let message = try EtcdJSON.parse(line, from: self.endpoint)
        if message["error"] != nil { throw EtcdJSON.error(message, path: "/v3/watch", httpStatus: 200) }
        guard let result = message["result"], case .object = result else {
            throw .badResponse("watch message without result from \(self.endpoint)")
        }
        if try EtcdJSON.bool(result, "canceled") {
            let compacted = try EtcdJSON.int64(result, "compact_revision")
            if compacted > 0 { throw .compacted(revision: compacted) }
            let why = result["cancel_reason"]?.stringValue?.echoed() ?? "no reason given"
            throw .unavailable("\(self.endpoint) cancelled the watch: \(why)")
        }
        if try EtcdJSON.bool(result, "created") {
            self.established = true
            // From now: the first revision not yet seen is the store's next one.
            if self.next == nil { self.next = try EtcdJSON.revision(result) + 1 }
        }
        // Progress reports (no events) only prove liveness: etcd 3.4 can send one ahead of
        // events of an unsynced watcher, so they never advance `next`.
        // A message holds whole revisions (etcd never splits one across messages), so
        // `next` moves past them only once all of the message's events were delivered.
        let floor = self.next ?? 0
        var last: Int64?
        for event in try EtcdJSON.array(result, "events") {
            guard let kvObject = event["kv"] else { throw .badResponse("watch event without kv") }
            let kv = try EtcdJSON.keyValue(kvObject)
            let kind: EtcdWatchEvent.Kind
            switch event["type"]?.stringValue {
            case nil, "PUT": kind = .put
            case "DELETE": kind = .delete
            case let other?: throw .badResponse("watch event of unknown type \(other.echoed(limit: 40))")
            }
            if kv.modRevision < floor { continue }  // never deliver twice
            await onEvent(EtcdWatchEvent(kind: kind, kv: kv))
            last = kv.modRevision
        }
        if let last { self.next = last + 1 }
    }
}
