/// The low-rank update of one linear module: `Δy = scaling · B · (A · x)`.
package struct LoRAPair: Sendable {
    /// `lora_A.weight`, `[r, in]`.
    package let a: FloatTensor
    /// `lora_B.weight`, `[out, r]`.
    package let b: FloatTensor
}

/// A loaded, validated PEFT LoRA adapter, applied per request without merging
/// (`y = W·x + s·B·(A·x)`), so sequences on different adapters share the base weights.
package final class LoRAWeights: Sendable {
    /// The rank `r` from `adapter_config.json`.
    package let rank: Int
    /// `lora_alpha / r`, or `lora_alpha / sqrt(r)` with rsLoRA (PEFT and vLLM agree).
    package let scaling: Float
    /// Pairs indexed `[layer][LinearModule.index]`; nil where the adapter has no update.
    package let pairs: [[LoRAPair?]]

    /// Creates adapter weights; `pairs` must have one row of 7 entries per model layer.
    package init(rank: Int, scaling: Float, pairs: [[LoRAPair?]]) {
        self.rank = rank
        self.scaling = scaling
        self.pairs = pairs
    }

    /// The modules that carry an update in at least one layer.
    package var targetedModules: Set<LinearModule> {
        var set: Set<LinearModule> = []
        for layer in self.pairs {
            for m in LinearModule.allCases where layer[m.index] != nil { set.insert(m) }
        }
        return set
    }
}
