import LorikeetGGUF
import Testing

@Suite("llama.cpp Q/K row permutation")
struct PermutationTests {
    /// llama.cpp `convert_hf_to_gguf.py`'s `permute`, spelled as numpy index arithmetic:
    /// `w.reshape(n_head, 2, rows // n_head // 2, cols).swapaxes(1, 2).reshape(rows, cols)`.
    /// Output element [h, i, s, c] (C order) is input element [h, s, i, c].
    static func numpyPermute(_ w: [Float], rows: Int, cols: Int, heads: Int) -> [Float] {
        let half = rows / heads / 2
        var out = [Float](repeating: .nan, count: w.count)
        for h in 0..<heads {
            for i in 0..<half {
                for s in 0..<2 {
                    for c in 0..<cols {
                        let outIndex = ((h * half + i) * 2 + s) * cols + c
                        let inIndex = ((h * 2 + s) * half + i) * cols + c
                        out[outIndex] = w[inIndex]
                    }
                }
            }
        }
        return out
    }

    @Test("permuteQK equals llama.cpp's permute and unpermuteQK inverts it", arguments: [(9, 64, 5), (3, 64, 7), (2, 4, 3), (1, 2, 1)])
    func roundTrip(heads: Int, headDim: Int, cols: Int) {
        let rows = heads * headDim
        let w = (0..<(rows * cols)).map { Float($0) }
        var permuted = w
        LlamaGGUF.permuteQK(&permuted, rows: rows, columns: cols, heads: heads)
        #expect(permuted == Self.numpyPermute(w, rows: rows, cols: cols, heads: heads))
        if headDim > 2 { #expect(permuted != w) }
        var back = permuted
        LlamaGGUF.unpermuteQK(&back, rows: rows, columns: cols, heads: heads)
        #expect(back == w)
    }

    @Test("within a head, GGUF row 2i+s is HF row s*half+i")
    func smallExample() {
        // One head of dim 4, one column: HF rows [a0 a1 b0 b1] -> GGUF [a0 b0 a1 b1].
        var gguf: [Float] = [10, 20, 11, 21]
        LlamaGGUF.unpermuteQK(&gguf, rows: 4, columns: 1, heads: 1)
        #expect(gguf == [10, 11, 20, 21])
    }
}
