/// An immutable fp32 tensor in one heap allocation, for hot loops that need a raw
/// pointer without `Array`'s bounds checks or copy-on-write checks.
// Why it is safe: the storage is written only inside `init` (before the object
// is shared) and is never mutated afterwards; it is freed in `deinit`, when no reference
// remains.
// Unchecked sendability is safe here: storage written only in init, immutable once shared.
package final class FloatTensor: @unchecked Sendable {  // Safe: storage immutable once shared.
    /// Dimensions, outermost first (a weight matrix is `[out, in]`).
    package let shape: [Int]
    /// Number of elements.
    package let count: Int
    /// The elements, row-major. Read-only by contract.
    package let pointer: UnsafePointer<Float>
    private let storage: UnsafeMutablePointer<Float>

    /// Copies `values` (which must hold `shape`'s element count) into a new tensor.
    package init(shape: [Int], values: [Float]) {
        let count = shape.reduce(1, *)
        precondition(values.count == count, "FloatTensor: \(values.count) values for shape \(shape)")
        self.shape = shape
        self.count = count
        let storage = UnsafeMutablePointer<Float>.allocate(capacity: max(count, 1))
        values.withUnsafeBufferPointer { src in
            if let base = src.baseAddress { storage.initialize(from: base, count: count) }
        }
        self.storage = storage
        self.pointer = UnsafePointer(storage)
    }

    deinit {
        self.storage.deallocate()
    }

    /// Rows of a 2-D tensor.
    package var rows: Int { self.shape.first ?? 0 }
    /// Columns of a 2-D tensor.
    package var columns: Int { self.shape.count >= 2 ? self.shape[1] : 1 }

    /// A copy of the elements (for tests).
    package var values: [Float] { Array(UnsafeBufferPointer(start: self.pointer, count: self.count)) }
}
