package import LorikeetProto
import Synchronization

/// Fleet mode's fence on this worker: adapter requests and `/health` are refused (503
/// "cluster unreachable") past the instant the cluster agent last vouched for
/// (`Fence`, `CLOCK_MONOTONIC`); base-model requests go on. Outside fleet mode it never fences.
package final class FleetFence: Sendable {
    /// `Int64.max` outside fleet mode (never fenced); the agent's instants are below it.
    private let validUntilMs = Atomic<Int64>(Int64.max)

    package init() {}

    /// Fleet mode: fenced until the first `Fence` arrives.
    package func arm() { self.validUntilMs.store(0, ordering: .releasing) }

    /// Whether this worker is part of a fleet (the fence was armed).
    package var isFleet: Bool { self.validUntilMs.load(ordering: .acquiring) != Int64.max }

    /// A new instant from the agent (through the supervisor).
    package func update(_ fence: Fence) {
        self.validUntilMs.store(min(fence.validUntilMonotonicMs, Int64.max - 1), ordering: .releasing)
    }

    /// Why adapters are not served now, or nil.
    package var problem: Status? {
        let until = self.validUntilMs.load(ordering: .acquiring)
        guard until != Int64.max, MonotonicClock.nowMs() >= until else { return nil }
        return Status(
            code: .unavailable,
            message:
                "cluster unreachable: this node cannot confirm it holds the fleet's current adapter table (its etcd lease is not renewed, or it is catching up); adapters are not served until it has caught up, base models are"
        )
    }
}
