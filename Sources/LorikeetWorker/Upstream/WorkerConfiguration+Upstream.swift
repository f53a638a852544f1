public import Logging

extension WorkerConfiguration {
    /// The engine a worker talks to: the upstream replicas when `--upstream` is given,
    /// else the engine process on `engineSocket`.
    public func makeEngine(table: AdapterTableReplica, logger: Logger) -> any EngineBackend {
        guard let upstream = self.upstream, !upstream.endpoints.isEmpty else {
            return EngineClient(socketPath: self.engineSocket, logger: logger)
        }
        let backend = UpstreamBackend(configuration: upstream, table: table, logger: logger)
        backend.start()
        return backend
    }
}

extension WorkerService {
    /// Standalone in front of upstream replicas: reconcile them with the table every
    /// `pollInterval` (a restarted replica comes back without adapters), and at once when
    /// one returns to rotation.
    func startUpstreamReconcileLoop(leader: LeaderMutationService) {
        guard let upstream = self.engine as? UpstreamBackend else { return }
        let logger = Logger(label: "lorikeet.worker.upstream")
        let metrics = self.routes.metrics
        @Sendable func reconcile() async {
            do {
                let outcome = try await leader.reconcileEngine()
                metrics.reconciled(unavailable: outcome.failed.count)
                if !outcome.isEmpty {
                    logger.notice(
                        "upstream replicas reconciled with the table",
                        metadata: ["added": "\(outcome.added)", "removed": "\(outcome.removedNames)", "failed": "\(outcome.failed)"])
                }
            } catch {
                logger.debug("upstream reconciliation skipped", metadata: ["error": "\(error)"])
            }
        }
        upstream.onReplicaRecovered { _ in Task { await reconcile() } }
        let interval = upstream.configuration.pollInterval
        Task { [weak upstream] in
            while !Task.isCancelled, upstream != nil {
                try? await Task.sleep(for: interval)
                await reconcile()
            }
        }
    }
}
