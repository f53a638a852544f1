import Logging

/// Keeps one etcd lease alive: renews it every TTL/3 and tells its owner when renewals have
/// been failing for longer than `fenceAfter` (TTL/2 by default), so that the owner can fence
/// itself (stop serving what the lease vouches for) while the lease is certainly still
/// alive — before any other node can act on its expiry.
///
/// The arithmetic: etcd renews a lease to a full TTL when it receives the keep-alive, which
/// is after the client sent it; so the lease lives at least until *send time + TTL*, measured
/// on the server's clock. Time here is measured from the send of the last successful
/// renewal, so a report at `fenceAfter` leaves `TTL − fenceAfter` (5 s for a 10 s lease) for
/// clock-rate skew and for the owner to fence.
package struct LeaseKeeper: Sendable {
    /// What the owner of the lease needs to know.
    package enum Health: Sendable, Equatable, CustomStringConvertible {
        /// The last renewal succeeded; `ttl` seconds remained according to etcd.
        case healthy(ttl: Int64)
        /// Renewal has failed for `duration` (≥ `fenceAfter`): fence now.
        case failing(duration: Duration, error: EtcdError)

        package var description: String {
            switch self {
            case .healthy(let ttl): "lease renewed (\(ttl) s left)"
            case .failing(let duration, let error): "lease renewal failed for longer than \(duration): \(error)"
            }
        }
    }

    package let client: EtcdClient
    package let lease: EtcdLease
    package let fenceAfter: Duration

    /// A keeper for `lease`, just granted (its TTL is counted from now until the first renewal).
    package init(client: EtcdClient, lease: EtcdLease, fenceAfter: Duration? = nil) {
        self.client = client
        self.lease = lease
        self.fenceAfter = fenceAfter ?? .milliseconds(lease.ttl * 500)
    }

    /// Renews the lease until the task is cancelled (`.cancelled`) or etcd reports the lease
    /// gone (`.leaseNotFound`: its keys are deleted; grant a new lease and re-register).
    /// `onChange` is called with the first successful renewal and on every change between
    /// healthy and failing.
    package func run(onChange: (Health) async -> Void) async throws(EtcdError) -> Never {
        let clock = ContinuousClock()
        let renewEvery = Duration.milliseconds(max(self.lease.ttl, 1) * 1000 / 3)
        var lastSuccess = clock.now
        var reported: Bool?  // nil before the first report; true when failing was reported
        while true {
            if Task.isCancelled { throw .cancelled }
            let sent = clock.now
            // Never wait past the moment failure must be reported.
            let fenceAt = lastSuccess + self.fenceAfter
            let timeout = max(min(renewEvery, fenceAt - sent), .milliseconds(500))
            do throws(EtcdError) {
                let ttl = try await self.client.keepAliveOnce(self.lease.id, timeout: timeout)
                guard ttl > 0 else { throw EtcdError.leaseNotFound(id: self.lease.id) }
                lastSuccess = sent
                if reported != false {
                    reported = false
                    await onChange(.healthy(ttl: ttl))
                }
                do { try await clock.sleep(until: sent + renewEvery) } catch { throw .cancelled }
            } catch {
                switch error {
                case .leaseNotFound, .cancelled, .shutdown: throw error
                default: break
                }
                let failing = clock.now - lastSuccess
                if failing >= self.fenceAfter, reported != true {
                    reported = true
                    self.client.logger.warning(
                        "etcd lease renewal failing: fence",
                        metadata: ["etcd.lease": "\(self.lease.id)", "failing_for": "\(failing)", "error": "\(error)"])
                    await onChange(.failing(duration: failing, error: error))
                }
                // Retry soon, but not in a tight loop against a dead cluster.
                let pause = min(Duration.milliseconds(250), max(fenceAt - clock.now, .milliseconds(50)))
                do { try await clock.sleep(for: pause) } catch { throw .cancelled }
            }
        }
    }
}
