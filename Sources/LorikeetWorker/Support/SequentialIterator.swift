/// An async stream iterator handed from the task that starts reading a response to a
/// closure that goes on reading it later (an HTTP response-body writer).
// Why it is safe: the iterator is used by one task at a time, in sequence.
// The creating task calls `next()` for the first element, then hands this object to a body
// closure that the response writer runs inline in that same task; no two calls to `next()`
// or `cancel()` ever overlap, and nothing else holds a reference.
// Unchecked sendability is safe here: one task uses it at a time, never two at once.
final class SequentialIterator<Element: Sendable>: @unchecked Sendable {  // Safe: one task uses it at a time.
    private var iterator: AsyncThrowingStream<Element, any Error>.AsyncIterator?

    init(_ iterator: AsyncThrowingStream<Element, any Error>.AsyncIterator) { self.iterator = iterator }

    /// The next element, or nil at the end (or after `cancel()`).
    func next() async throws -> Element? {
        guard var iterator = self.iterator else { return nil }
        defer { self.iterator = iterator }
        return try await iterator.next()
    }

    /// Drops the iterator; the stream's termination handler runs (aborting the request).
    func cancel() { self.iterator = nil }
}
