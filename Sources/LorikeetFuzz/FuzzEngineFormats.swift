// Fuzz targets `safetensors` and `lora-config`: the engine's parsers for files an
// operator points it at (model weights, PEFT adapters).
import Foundation
import LorikeetEngine
import LorikeetGGUF

/// The tiny fixture model's shape (Tests/Fixtures/make_tiny_llama.py): adapters are
/// checked against it.
let fuzzModel: LlamaConfig? = try? LlamaConfig(
    hiddenSize: 64, intermediateSize: 128, numLayers: 2, numHeads: 4, numKVHeads: 2,
    vocabSize: 258, maxPositionEmbeddings: 256, rmsNormEps: 1e-5, ropeTheta: 10_000,
    tieWordEmbeddings: false, bosTokenID: 256, eosTokenIDs: [257])

/// A rank-8 all-linear adapter config for the fixture model.
let fuzzAllLinear: AdapterConfig? = fuzzModel.flatMap { model in
    try? AdapterLoader.parseConfig(
        Array(#"{"peft_type":"LORA","r":8,"lora_alpha":16,"target_modules":"all-linear"}"#.utf8),
        path: "/fuzz", model: model, maxLoraRank: 64)
}

/// Parses a safetensors file, converts every (small) tensor to fp32, and tries the
/// tensors as LoRA weights for an all-linear rank-8 adapter of the fixture model.
func fuzzSafetensors(_ bytes: [UInt8]) {
    guard let file = try? SafetensorsFile(bytes: bytes) else { return }
    for (name, info) in file.tensors where info.count <= 1 << 16 {
        guard let (shape, values) = try? file.floats(name) else { fatalError("listed tensor \(name) does not read") }
        if values.count != info.count || shape != info.shape { fatalError("tensor \(name) read with the wrong size") }
    }
    guard let model = fuzzModel else { fatalError("fixture model config refused") }
    guard let config = fuzzAllLinear else { fatalError("all-linear adapter config refused") }
    _ = try? AdapterLoader.buildWeights(file, config: config, path: "/fuzz", model: model)
}

/// Validates an `adapter_config.json` against the fixture model.
func fuzzLoRAConfig(_ bytes: [UInt8]) {
    guard let model = fuzzModel else { fatalError("fixture model config refused") }
    _ = try? AdapterLoader.parseConfig(bytes, path: "/fuzz", model: model, maxLoraRank: 64)
}
