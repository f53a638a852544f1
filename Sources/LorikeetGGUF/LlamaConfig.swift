/// Hyper-parameters of a Llama-architecture model, named after the fields of a Hugging Face
/// `config.json` for `LlamaForCausalLM` (and compatible: Mistral-style, SmolLM, Qwen2
/// without biases).
///
/// The one config type of both model formats: `LlamaGGUF.config(from:)` reads it from GGUF
/// `llama.*` / `tokenizer.ggml.*` metadata, and the engine's `init(json:)` from a
/// `config.json`. Every value is checked when it is made (`LlamaConfigError`).
package struct LlamaConfig: Sendable, Equatable {
    /// `hidden_size` (GGUF `llama.embedding_length`).
    package var hiddenSize: Int
    /// `intermediate_size`, the SwiGLU MLP width (`llama.feed_forward_length`).
    package var intermediateSize: Int
    /// `num_hidden_layers` (`llama.block_count`).
    package var numLayers: Int
    /// `num_attention_heads` (`llama.attention.head_count`).
    package var numHeads: Int
    /// `num_key_value_heads` for grouped-query attention (`llama.attention.head_count_kv`);
    /// defaults to `num_attention_heads`.
    package var numKVHeads: Int
    /// `head_dim` (`llama.attention.key_length`, else `llama.rope.dimension_count`); defaults
    /// to hidden_size / num_attention_heads.
    package var headDim: Int
    /// `vocab_size` (`llama.vocab_size`, else the token embedding's rows).
    package var vocabSize: Int
    /// `max_position_embeddings`: the context length (`llama.context_length`).
    package var maxPositionEmbeddings: Int
    /// `rms_norm_eps` (`llama.attention.layer_norm_rms_epsilon`).
    package var rmsNormEps: Float
    /// `rope_theta` (`llama.rope.freq_base`, default 10000).
    package var ropeTheta: Double
    /// `tie_word_embeddings`: the output projection reuses `embed_tokens` (in GGUF: the
    /// file has no `output.weight`).
    package var tieWordEmbeddings: Bool
    /// `bos_token_id` (`tokenizer.ggml.bos_token_id`), when given.
    package var bosTokenID: UInt32?
    /// `eos_token_id` (a number or a list in HF configs; `tokenizer.ggml.eos_token_id`, or
    /// the tokenizer's stop tokens, for GGUF).
    package var eosTokenIDs: [UInt32]

    /// Creates a config from explicit values and checks them.
    package init(
        hiddenSize: Int, intermediateSize: Int, numLayers: Int, numHeads: Int, numKVHeads: Int,
        headDim: Int? = nil, vocabSize: Int, maxPositionEmbeddings: Int, rmsNormEps: Float,
        ropeTheta: Double, tieWordEmbeddings: Bool, bosTokenID: UInt32?, eosTokenIDs: [UInt32]
    ) throws(LlamaConfigError) {
        self.hiddenSize = hiddenSize
        self.intermediateSize = intermediateSize
        self.numLayers = numLayers
        self.numHeads = numHeads
        self.numKVHeads = numKVHeads
        self.headDim = headDim ?? (numHeads > 0 ? hiddenSize / numHeads : 0)
        self.vocabSize = vocabSize
        self.maxPositionEmbeddings = maxPositionEmbeddings
        self.rmsNormEps = rmsNormEps
        self.ropeTheta = ropeTheta
        self.tieWordEmbeddings = tieWordEmbeddings
        self.bosTokenID = bosTokenID
        self.eosTokenIDs = eosTokenIDs
        try self.validate()
    }

    /// Width of the query projection output (heads × head_dim).
    package var qDim: Int { self.numHeads * self.headDim }
    /// Width of the key/value projection output (kv heads × head_dim).
    package var kvDim: Int { self.numKVHeads * self.headDim }

    private func validate() throws(LlamaConfigError) {
        let limit = 1 << 20
        func positive(_ v: Int, _ field: String) throws(LlamaConfigError) {
            guard v > 0, v <= limit else {
                throw LlamaConfigError(field: field, reason: "must be between 1 and \(limit), got \(v)")
            }
        }
        try positive(self.hiddenSize, "hidden_size")
        try positive(self.intermediateSize, "intermediate_size")
        try positive(self.numLayers, "num_hidden_layers")
        try positive(self.numHeads, "num_attention_heads")
        try positive(self.numKVHeads, "num_key_value_heads")
        try positive(self.headDim, "head_dim")
        try positive(self.vocabSize, "vocab_size")
        try positive(self.maxPositionEmbeddings, "max_position_embeddings")
        guard self.numHeads % self.numKVHeads == 0 else {
            throw LlamaConfigError(
                field: "num_key_value_heads",
                reason: "(\(self.numKVHeads)) must divide num_attention_heads (\(self.numHeads))")
        }
        guard self.headDim % 2 == 0 else { throw LlamaConfigError(field: "head_dim", reason: "must be even for RoPE") }
        guard self.rmsNormEps > 0, self.rmsNormEps.isFinite else {
            throw LlamaConfigError(field: "rms_norm_eps", reason: "must be a positive number")
        }
        guard self.ropeTheta > 0, self.ropeTheta.isFinite else {
            throw LlamaConfigError(field: "rope_theta", reason: "must be a positive number")
        }
        for id in self.eosTokenIDs + (self.bosTokenID.map { [$0] } ?? []) where Int(id) >= self.vocabSize {
            throw LlamaConfigError(field: "eos_token_id/bos_token_id", reason: "token id \(id) is outside the vocabulary")
        }
    }
}

/// A `LlamaConfig` value that is missing or out of range, named by its `config.json` field.
package struct LlamaConfigError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The Hugging Face field name (`hidden_size`, `num_key_value_heads`, ...).
    package var field: String
    /// What is wrong with it.
    package var reason: String

    /// Names the field and what is wrong with it.
    package init(field: String, reason: String) {
        self.field = field
        self.reason = reason
    }

    package var description: String { "'\(self.field)' \(self.reason)" }
}
