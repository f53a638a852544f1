import Foundation
import Logging
import LorikeetProto
import NIOCore

@testable import LorikeetWorker

/// Runs a real `WorkerService` on 127.0.0.1 (a free port) for the duration of `body`,
/// then drains it. Bounded: startup must finish within 20 s.
enum WorkerHarness {
    static var logger: Logger {
        var logger = Logger(label: "test.worker")
        logger.logLevel = ProcessInfo.processInfo.environment["LORIKEET_TEST_LOG"] == nil ? .critical : .debug
        return logger
    }

    static func configuration(engine: FakeEngine, _ adjust: (inout WorkerConfiguration) -> Void = { _ in }) -> WorkerConfiguration {
        var configuration = WorkerConfiguration(
            engineSocket: engine.path, listen: .address(host: "127.0.0.1", port: 0), drainGrace: .seconds(2),
            engineStartupTimeout: .seconds(5), version: "test")
        adjust(&configuration)
        return configuration
    }

    static func withWorker<Result: Sendable>(
        _ configuration: WorkerConfiguration, engine: WorkerEngineFactory? = nil,
        _ body: @Sendable (_ port: Int, _ service: WorkerService) async throws -> Result
    ) async throws -> Result {
        try await Self.withWorker(WorkerService(configuration: configuration, logger: Self.logger, engine: engine), body)
    }

    /// Runs `service` (its own `onReady` is not used: the port comes from its server).
    static func withWorker<Result: Sendable>(
        _ service: WorkerService, _ body: @Sendable (_ port: Int, _ service: WorkerService) async throws -> Result
    ) async throws -> Result {
        let (ready, readyContinuation) = AsyncStream.makeStream(of: Int.self)
        let watcher = Task {
            while !Task.isCancelled {
                if let port = service.server.localAddress?.port {
                    readyContinuation.yield(port)
                    readyContinuation.finish()
                    return
                }
                try? await Task.sleep(for: .milliseconds(10))
            }
        }
        defer { watcher.cancel() }
        return try await withThrowingTaskGroup(of: Result?.self) { group in
            group.addTask {
                try await service.run()
                readyContinuation.finish()
                return nil
            }
            group.addTask {
                try await Task.sleep(for: .seconds(20))
                readyContinuation.finish()
                return nil
            }
            var iterator = ready.makeAsyncIterator()
            guard let port = await iterator.next(), port > 0 else {
                group.cancelAll()
                // Surface the startup error of the service, if any.
                while (try await group.next()) != nil {}
                throw TestHTTPError.malformed("worker did not start")
            }
            do {
                let result = try await body(port, service)
                await service.drain(grace: .seconds(2))
                group.cancelAll()
                while (try? await group.next()) != nil {}
                return result
            } catch {
                await service.drain(grace: .milliseconds(100))
                group.cancelAll()
                while (try? await group.next()) != nil {}
                throw error
            }
        }
    }
}

/// A fresh temporary directory, removed by the caller.
func makeTemporaryDirectory(_ name: String = "lk") -> String {
    let path = NSTemporaryDirectory() + "\(name)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return PathPolicy.realPath(path) ?? path
}
