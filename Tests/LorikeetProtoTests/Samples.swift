import LorikeetProto

/// Messages with every field set to a non-default value, one per envelope body case.
enum Samples {
    static let adapter = AdapterRecord(
        name: "sql-lora", intID: 7, path: "/data/lora/sql", baseModel: "base", loadInplace: true, pinned: true,
        loadedAtUnixMs: 1_764_000_000_123
    )
    static let adapter2 = AdapterRecord(name: "émoji-🦜", intID: 8, path: "/data/lora/ü", baseModel: "base")
    static let table = AdapterTable(version: 42, adapters: [adapter, adapter2], nextIntID: 9)
    static let status = Status(code: .alreadyExists, message: "The lora adapter 'x' has already been loaded.", param: "lora_name")
    static let load = LoadAdapterRequest(
        name: "n", path: "/p", loadInplace: true, pinned: true, baseModel: "b", originSlot: 3, caller: "127.0.0.1:5000",
        reservedIntID: 11
    )
    static let unload = UnloadAdapterRequest(name: "n", intID: 5, originSlot: 2, caller: "c")
    static let mutationReply = AdapterMutationReply(status: status, adapter: adapter, tableVersion: 3)
    static let change = TableChange(version: 9, upserts: [adapter, adapter2], removes: ["old", "older"], nextIntID: 10)

    static let controlBodies: [ControlEnvelope.Body] = [
        .hello(Hello(workerID: 3, pid: 4242, version: "0.1.0")),
        .ready(Ready(tableVersion: 17)),
        .heartbeat(Heartbeat(seq: 99, requestsServed: 1234, inFlight: 5)),
        .role(RoleAssignment(role: .leader, epoch: 12, engineSocket: "/run/engine.sock")),
        .snapshot(TableSnapshot(table: table)),
        .change(change),
        .changeAck(TableChangeAck(version: 9)),
        .load(load),
        .unload(unload),
        .mutationReply(mutationReply),
        .commit(CommitRequest(epoch: 12, baseVersion: 8, change: change)),
        .commitReply(CommitReply(status: Status(code: .failedPrecondition, message: "stale epoch"), version: 9)),
        .drain(Drain(graceMs: 30_000)),
        .shutdown(Shutdown(fast: true)),
        .fence(Fence(validUntilMonotonicMs: 123_456_789)),
    ]

    static let adminBodies: [AdminEnvelope.Body] = [
        .status,
        .statusReply(
            StatusReply(
                version: "0.1.0", uptimeMs: 1000, epoch: 3, tableVersion: 4, engine: .running, workers: 4,
                leaderSlot: 2, readyWorkers: 3
            )
        ),
        .listWorkers,
        .workerList(
            WorkerList(workers: [
                WorkerInfo(
                    slot: 1, pid: 77, role: .leader, phase: .ready, restarts: 2, lastExit: "signal 9", heartbeatAgeMs: 120,
                    requestsServed: 900
                ),
                WorkerInfo(slot: 2, pid: 78, phase: .starting),
            ])
        ),
        .listAdapters,
        .adapterTable(table),
        .load(load),
        .unload(unload),
        .mutationReply(mutationReply),
        .batch(BatchRequest(items: [.load(load), .unload(unload)])),
        .batchReply(BatchReply(results: [mutationReply, AdapterMutationReply()])),
        .rollingRestart,
        .scale(ScaleRequest(workers: 8)),
        .drainWorker(DrainWorkerRequest(slot: 3)),
        .stop(StopRequest(fast: true)),
        .result(CallResult(status: Status(code: .unavailable, message: "no leader"))),
        .nodes(ClusterNodesRequest(includeSelf: true)),
        .nodesReply(
            ClusterNodesReply(
                status: status,
                nodes: [
                    NodeStatus(name: "b", appliedRevision: 1, state: "ready", version: "v", startedUnixMs: 2, leaseID: 3, incarnation: "i")
                ], revision: 4)
        ),
    ]

    static let engineBodies: [EngineEnvelope.Body] = [
        .generate(
            GenerateRequest(
                requestID: "cmpl-1", promptTokens: [1, 2, 3, 65_000], promptText: "Hello",
                messages: [ChatMessage(role: "system", content: "Be brief."), ChatMessage(role: "user", content: "Hi 你好")],
                sampling: SamplingParams(
                    maxTokens: 32, temperature: 0.7, topP: 0.9, topK: 40, minP: 0.05, repetitionPenalty: 1.2,
                    presencePenalty: 0.5, frequencyPenalty: -0.25, logitBias: [LogitBias(tokenID: 7, bias: -100)],
                    minTokens: 3, seed: 1234, stop: ["\n\n", "END"], includeStopStrInOutput: true,
                    stopTokenIDs: [2, 49_152], ignoreEOS: true, logprobs: 5, promptLogprobs: 0
                ),
                adapter: AdapterRef(name: "sql-lora", intID: 7, path: "/data/lora/sql")
            )
        ),
        .chunk(
            GenerateChunk(
                requestID: "cmpl-1", tokens: [5, 6], text: "wor", finishReason: "length",
                usage: Usage(promptTokens: 4, completionTokens: 32, cachedPromptTokens: 3), status: Status(code: .internal, message: "x"),
                logprobs: [
                    PositionLogprobs(
                        chosen: TokenLogprob(tokenID: 5, logprob: -0.5, token: "w"),
                        top: [TokenLogprob(tokenID: 5, logprob: -0.5, token: "w")])
                ],
                promptLogprobs: [PositionLogprobs(chosen: TokenLogprob(tokenID: 1, logprob: 0, token: "<s>"), noLogprob: true)],
                stopReason: .token(49_152)
            )
        ),
        .chunk(GenerateChunk(requestID: "cmpl-1", text: "done", finishReason: "stop", stopReason: .string("END"))),
        .generate(
            GenerateRequest(
                requestID: "cmpl-2", promptText: "defaults",
                sampling: SamplingParams(
                    maxTokens: 0, temperature: nil, topP: nil, topK: nil, minP: nil, repetitionPenalty: nil,
                    jsonSchema: #"{"type":"object"}"#, choices: ["yes", "no"], badWords: ["bad"], skipSpecialTokens: false,
                    cacheSalt: "tenant-a")
            )
        ),
        .abort(AbortRequest(requestID: "cmpl-1")),
        .addAdapter(AddAdapterRequest(epoch: 5, name: "a", intID: 3, path: "/x", pinned: true, replace: true)),
        .removeAdapter(RemoveAdapterRequest(epoch: 5, intID: 3)),
        .pinAdapter(PinAdapterRequest(epoch: 5, intID: 3, pinned: true)),
        .listAdapters,
        .tokenize(
            TokenizeRequest(
                promptText: "hi", messages: [ChatMessage(role: "user", content: "x")], addSpecialTokens: false,
                addGenerationPrompt: true, returnTokenStrs: true)),
        .tokenizeReply(
            TokenizeReply(
                status: Status(code: .invalidArgument, message: "m"), tokens: [1, 2], tokenStrs: ["a", "b"], maxModelLength: 256)),
        .detokenize(DetokenizeRequest(tokens: [1, 2])),
        .detokenizeReply(DetokenizeReply(status: Status(code: .internal, message: "m"), prompt: "ab")),
        .adapterList(
            EngineAdapterList(adapters: [
                EngineAdapter(name: "a", intID: 3, path: "/x", pinned: true, active: true, rank: 8), EngineAdapter(name: "b"),
            ])
        ),
        .health,
        .healthReply(HealthReply(status: Status(code: .unavailable, message: "loading"), maxEpoch: 9, runningRequests: 2)),
        .modelInfo,
        .modelInfoReply(
            ModelInfo(
                modelName: "tiny", architecture: "llama", vocabSize: 258, contextLength: 2048, maxLoras: 4, maxCPULoras: 8,
                maxLoraRank: 64, eosTokenIDs: [257, 2]
            )
        ),
        .result(CallResult(status: Status(code: .notFound, message: "no adapter 3"))),
        .tokenize(
            TokenizeRequest(
                promptText: "Hello", messages: [ChatMessage(role: "user", content: "Hi")], addSpecialTokens: true,
                addGenerationPrompt: true, returnTokenStrs: true)),
        .tokenizeReply(TokenizeReply(status: status, tokens: [1, 2], tokenStrs: ["a", "b"], maxModelLength: 2048)),
        .detokenize(DetokenizeRequest(tokens: [3, 4])),
        .detokenizeReply(DetokenizeReply(status: status, prompt: "ab")),
    ]

    static let clusterBodies: [ClusterEnvelope.Body] = [
        .table(ClusterTable(revision: 77, table: table, caughtUp: true)),
        .applied(ClusterApplied(revision: 78)),
        .reserve(ClusterReserveRequest(name: "sql-lora")),
        .reserveReply(ClusterReserveReply(status: status, intID: 12)),
        .commit(ClusterCommitRequest(upserts: [adapter], removes: ["old"], previous: [adapter2])),
        .commitReply(ClusterCommitReply(status: status, revision: 79)),
        .nodes(ClusterNodesRequest(includeSelf: true)),
        .nodesReply(
            ClusterNodesReply(
                status: status,
                nodes: [
                    NodeStatus(
                        name: "a:8000", appliedRevision: 5, state: "ready", version: "0.1.0", startedUnixMs: 9, leaseID: 3,
                        incarnation: "0123456789abcdef0123456789abcdef")
                ],
                revision: 80)),
        .fence(Fence(validUntilMonotonicMs: 42)),
    ]

    static var clusterEnvelopes: [ClusterEnvelope] {
        [ClusterEnvelope(body: nil)] + clusterBodies.enumerated().map { ClusterEnvelope(callID: UInt64($0.offset + 1), body: $0.element) }
    }

    /// Envelopes with header fields set, one per body case plus one without a body.
    static var controlEnvelopes: [ControlEnvelope] {
        [ControlEnvelope(body: nil)]
            + controlBodies.enumerated().map {
                ControlEnvelope(callID: UInt64($0.offset + 1), deadlineUnixMs: 1_764_000_000_000, body: $0.element)
            }
    }
    static var adminEnvelopes: [AdminEnvelope] {
        [AdminEnvelope(body: nil)]
            + adminBodies.enumerated().map { AdminEnvelope(callID: UInt64($0.offset + 1), deadlineUnixMs: 5, body: $0.element) }
    }
    static var engineEnvelopes: [EngineEnvelope] {
        [EngineEnvelope(body: nil)]
            + engineBodies.enumerated().map { EngineEnvelope(callID: UInt64.max - UInt64($0.offset), deadlineUnixMs: 7, body: $0.element) }
    }
}
