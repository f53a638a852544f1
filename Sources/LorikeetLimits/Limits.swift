/// Every limit on input that crosses a process boundary, in one place (`docs/LIMITS.md`
/// is the table of them).
///
/// The design rule: each limit is checked at the outermost edge (HTTP, admin socket,
/// state file, adapter directory) with a clear error, and again inside; and the limits
/// are chosen so that no request that passes the edge can produce a frame larger than
/// the channel it travels on (`Limits.check()` proves the arithmetic at startup and in
/// the tests).
package enum Limits {
    // MARK: Channels

    /// Largest frame payload on the control channel (supervisor <-> worker), the engine
    /// channel (worker <-> engine) and the admin socket (ops <-> supervisor).
    package static let channelFrameBytes = 16 * 1024 * 1024

    // MARK: HTTP

    /// Default `--max-body-bytes`.
    package static let defaultBodyBytes = 8 * 1024 * 1024
    /// Largest `--max-body-bytes` an operator may set: a body this large, lowered into an
    /// engine request, still fits a frame with room for the envelope.
    package static let maxBodyBytesCeiling = 12 * 1024 * 1024
    /// Largest request head (request line and headers, up to the blank line). A longer
    /// one is a 431 with OpenAI's envelope and the connection closes; below NIO's own
    /// 80 KiB parser limit, which would answer an empty 400.
    package static let requestHeadBytes = 64 * 1024

    // MARK: Upstream replicas (upstream mode)

    /// Largest response body the worker reads whole from an upstream vLLM / SGLang replica:
    /// a non-streamed completion or chat completion (buffered before it is answered), or a
    /// replica's `/v1/models`. A larger one closes that upstream request and is a 502; the
    /// worker and its other requests carry on. Streamed answers pass through with back
    /// pressure and are not limited. 32 MiB holds a 32k-token completion with 20 top
    /// logprobs per token (about 25 MiB of JSON).
    package static let upstreamBodyBytes = 32 * 1024 * 1024

    // MARK: Adapters

    /// `lora_name` (and `model` naming an adapter), in UTF-8 bytes.
    package static let adapterNameBytes = 256
    /// `lora_path`, in UTF-8 bytes (Linux `PATH_MAX`, 4096, less its terminating NUL).
    package static let adapterPathBytes = 4095
    /// `base_model_name`, in UTF-8 bytes.
    package static let baseModelNameBytes = 256
    /// Default `--max-adapters`: adapters in the committed table.
    package static let defaultMaxAdapters = 1024
    /// Largest `--max-adapters`: the whole table at its largest still fits one frame.
    package static let maxAdaptersCeiling = 2048
    /// Operations in one `POST /v1/lora_adapters/batch` or admin batch.
    package static let batchOperations = 256
    /// Worst-case encoded size of one committed adapter record (name, path, base model,
    /// ids, timestamps and protobuf tags).
    package static let adapterRecordBytes = adapterNameBytes + adapterPathBytes + baseModelNameBytes + 128
    /// Largest persisted table file: the table at `maxAdaptersCeiling`, plus its header.
    package static let tableFileBytes = maxAdaptersCeiling * adapterRecordBytes + 4096

    // MARK: Generation

    /// Bytes of prompt text in one request (`prompt`, or all `messages` contents together).
    package static let promptBytes = 8 * 1024 * 1024
    /// Token ids in `prompt` given as tokens.
    package static let promptTokens = 1_000_000
    /// JSON values in one request body (every number, string, array and object counts):
    /// a prompt of `promptTokens` ids plus room for everything else. Bounds the parsed tree.
    package static let jsonValues = promptTokens + 65_536
    /// Entries of `messages`.
    package static let messages = 4096
    /// Entries of `stop`.
    package static let stopSequences = 16
    /// UTF-8 bytes of one `stop` entry.
    package static let stopSequenceBytes = 256
    /// Entries of `bad_words`.
    package static let badWords = 64
    /// UTF-8 bytes of one `bad_words` entry.
    package static let badWordBytes = 256
    /// UTF-8 bytes of `cache_salt`.
    package static let cacheSaltBytes = 256
    /// Entries of `stop_token_ids`.
    package static let stopTokenIDs = 256
    /// Choices of one request (`n`): each is a sequence in the engine's batch.
    package static let choices = 16
    /// Alternatives per position (`logprobs`, `top_logprobs`): OpenAI's 20.
    package static let topLogprobs = 20
    /// Entries of `logit_bias`.
    package static let logitBiasEntries = 1024
    /// Largest `repetition_penalty`.
    package static let repetitionPenalty: Float = 100
    /// Prompt tokens × (alternatives + 1) of prompt log probabilities (`echo` with
    /// `logprobs`): they travel in one engine frame (an entry is ~15 bytes plus its token text).
    package static let promptLogprobEntries = 200_000

    // MARK: Structured output

    /// UTF-8 bytes of one structured-output constraint as the engine channel carries it
    /// (the JSON schema's text, or all `guided_choice` entries together).
    package static let structuredConstraintBytes = 64 * 1024
    /// Nodes of one compiled JSON schema (every subschema, property, enum value counts once).
    package static let structuredSchemaNodes = 2048
    /// Nesting of a JSON schema (subschemas inside subschemas), and of the JSON a
    /// `json_object` (schema-less) document may open.
    package static let structuredNestingDepth = 32
    /// `properties` of one object schema.
    package static let structuredProperties = 64
    /// Entries of one `enum` or `guided_choice`.
    package static let structuredChoices = 256
    /// Whitespace bytes in a row between two JSON tokens of a constrained document (a
    /// model that only emits spaces would otherwise never end it).
    package static let structuredWhitespaceRun = 24
    /// Bytes of one number in a constrained document (sign, digits, point and exponent).
    package static let structuredNumberBytes = 32

    // MARK: Cluster (etcd)

    /// Largest response body of one etcd JSON-gateway call, and largest single message of a
    /// watch stream (`LorikeetCluster`): the whole adapter table read in one range, base64'd
    /// (4/3) with its JSON per key, fits with room to spare. A bigger response fails that
    /// call (`EtcdError.responseTooLarge`) and closes its connection; nothing crashes.
    package static let etcdResponseBytes = 32 * 1024 * 1024

    // MARK: Echoes

    /// A client-supplied value repeated in a log line, audit record or error message is
    /// cut to this many bytes (with a marker).
    package static let echoBytes = 256

    /// Whether the limits above are consistent; the reason when they are not. Checked by
    /// the tests and by `lorikeet serve` at startup (a build that breaks the arithmetic
    /// must not run).
    package static func inconsistency() -> String? {
        let envelope = 64 * 1024
        if self.maxBodyBytesCeiling + envelope > self.channelFrameBytes {
            return "the largest HTTP body (\(self.maxBodyBytesCeiling)) does not fit an engine frame (\(self.channelFrameBytes))"
        }
        if self.promptBytes + self.messages * 32 + self.stopSequences * (self.stopSequenceBytes + 8) + envelope
            > self.channelFrameBytes
        {
            return "the largest generation request does not fit an engine frame"
        }
        if self.promptLogprobEntries * 64 + envelope > self.channelFrameBytes {
            return "the largest prompt log probabilities do not fit an engine frame"
        }
        if self.tableFileBytes + envelope > self.channelFrameBytes {
            return "the largest adapter table (\(self.tableFileBytes) bytes) does not fit a control frame"
        }
        if self.tableFileBytes / 3 * 4 + self.maxAdaptersCeiling * 1024 + envelope > self.etcdResponseBytes {
            return "the largest adapter table, read from etcd as base64 JSON, does not fit an etcd response"
        }
        return nil
    }
}

extension String {
    /// This string cut to at most `limit` UTF-8 bytes (at a character boundary), with
    /// "…(N bytes)" appended when it was cut: the safe way to repeat client input in a
    /// log, an audit record or an error message.
    package func echoed(limit: Int = Limits.echoBytes) -> String {
        let count = self.utf8.count
        guard count > limit else { return self }
        var kept = 0
        var end = self.startIndex
        for character in self {
            let size = character.utf8.count
            if kept + size > limit { break }
            kept += size
            end = self.index(after: end)
        }
        return String(self[..<end]) + "…(\(count) bytes)"
    }
}
