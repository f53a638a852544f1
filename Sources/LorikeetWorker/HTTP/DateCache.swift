import Glibc
import Synchronization

/// The `Date` header value (RFC 9110 IMF-fixdate), formatted at most once per second.
package final class DateCache: Sendable {
    private let cached = Mutex<(second: Int, value: String)>((-1, ""))

    package init() {}

    package var current: String {
        let now = time(nil)
        if let hit = self.cached.withLock({ $0.second == now ? $0.value : nil }) { return hit }
        let value = Self.format(now)
        self.cached.withLock { $0 = (now, value) }
        return value
    }

    private static let days = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]
    private static let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]

    static func format(_ seconds: time_t) -> String {
        var clock = seconds
        var parts = tm()
        gmtime_r(&clock, &parts)
        func two(_ value: Int32) -> String { value < 10 ? "0\(value)" : "\(value)" }
        return "\(Self.days[Int(parts.tm_wday)]), \(two(parts.tm_mday)) \(Self.months[Int(parts.tm_mon)]) "
            + "\(parts.tm_year + 1900) \(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec)) GMT"
    }
}
