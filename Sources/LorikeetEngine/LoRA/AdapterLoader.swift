import Foundation

/// Why a PEFT LoRA adapter was refused. Messages use vLLM's wording where vLLM has one
/// (rank, DoRA, `modules_to_save`, bias, unexpected target modules), so clients that
/// match on them keep working.
package enum AdapterLoadError: Error, Equatable, CustomStringConvertible, Sendable {
    /// The directory or a file in it could not be opened safely (missing, not a directory,
    /// not canonical, a symlink, ...).
    case file(SecureFileError)
    /// `adapter_config.json` is not valid JSON or has a malformed field.
    case invalidConfig(path: String, reason: String)
    /// `r` is larger than the engine's `max_lora_rank` (vLLM wording).
    case rankTooLarge(rank: Int, maxLoraRank: Int)
    /// `use_dora: true`.
    case dora
    /// Non-empty `modules_to_save`.
    case modulesToSave([String])
    /// `bias` other than `"none"`.
    case bias(String)
    /// Target modules or tensors name modules the model has no LoRA support for (vLLM wording).
    case unexpectedModules(path: String, expected: [String], received: [String])
    /// `adapter_model.safetensors` is malformed or truncated.
    case safetensors(SafetensorsError)
    /// The weights file holds no LoRA tensors.
    case noTensors(path: String)
    /// A `lora_A`/`lora_B` tensor has the wrong shape for the model and rank.
    case shapeMismatch(tensor: String, expected: [Int], actual: [Int])
    /// A module has `lora_A` without `lora_B` or the reverse.
    case incompletePair(module: String)

    package var description: String {
        switch self {
        case .file(let e): "cannot load LoRA adapter: \(e)"
        case .invalidConfig(let path, let reason): "invalid adapter_config.json in \(path): \(reason)"
        case .rankTooLarge(let rank, let max): "LoRA rank \(rank) is greater than max_lora_rank \(max)."
        case .dora: "This engine does not yet support DoRA (use_dora is true)."
        case .modulesToSave(let m): "This engine only supports modules_to_save being None (got \(m))."
        case .bias(let b): "Adapter bias cannot be used without bias_enabled (bias is \"\(b)\"; only \"none\" is supported)."
        case .unexpectedModules(let path, let expected, let received):
            "While loading \(path), expected target modules in \(expected) but received \(received). Please verify that the loaded LoRA module is correct"
        case .safetensors(let e): "adapter_model.safetensors: \(e)"
        case .noTensors(let path): "adapter_model.safetensors in \(path) contains no LoRA tensors"
        case .shapeMismatch(let t, let expected, let actual):
            "LoRA tensor '\(t)' has shape \(actual), expected \(expected) for this model"
        case .incompletePair(let m): "LoRA module '\(m)' needs both lora_A and lora_B weights"
        }
    }

    /// The engine-boundary error (every adapter refusal is INVALID_ARGUMENT, except a
    /// missing path which is NOT_FOUND).
    package var engineError: EngineError {
        switch self {
        case .file(.missing), .file(.cannotResolve): EngineError(.notFound, self.description)
        default: EngineError(.invalidArgument, self.description)
        }
    }
}

/// A parsed and validated `adapter_config.json`.
package struct AdapterConfig: Sendable, Equatable {
    /// LoRA rank `r`.
    package var rank: Int
    /// `lora_alpha`.
    package var alpha: Double
    /// `use_rslora`: scale by `alpha / sqrt(r)` instead of `alpha / r`.
    package var useRSLoRA: Bool
    /// Module kinds selected by `target_modules`.
    package var targets: Set<LinearModule>
    /// PEFT scaling factor.
    package var scaling: Float { Float(self.useRSLoRA ? self.alpha / self.rank.squareRootDouble : self.alpha / Double(self.rank)) }
}

extension Int {
    fileprivate var squareRootDouble: Double { Double(self).squareRoot() }
}

/// An adapter read from disk and validated against a model.
package struct LoadedAdapter: Sendable {
    /// The canonical directory it was read from.
    package var path: String
    /// Its validated config.
    package var config: AdapterConfig
    /// The weights, ready for per-request application.
    package var weights: LoRAWeights
}

/// Loads PEFT LoRA adapters (`adapter_config.json` + `adapter_model.safetensors`).
package enum AdapterLoader {
    /// The largest adapter file accepted (4 GiB).
    package static let maxFileSize = 1 << 32

    /// Reads and validates the adapter in `path` for `model`.
    ///
    /// The path must be absolute and canonical (it is re-resolved with `realpath` and
    /// refused if that changes it); both files are opened with `O_NOFOLLOW`.
    package static func load(path: String, model: LlamaConfig, maxLoraRank: Int) throws(AdapterLoadError) -> LoadedAdapter {
        let dir: String
        let configBytes: [UInt8]
        let weightBytes: [UInt8]
        do {
            dir = try SecureFile.canonicalDirectory(path)
            configBytes = try SecureFile.read(dir + "/adapter_config.json", limit: 1 << 20)
        } catch {
            throw .file(error)
        }
        let config = try self.parseConfig(configBytes, path: dir, model: model, maxLoraRank: maxLoraRank)
        do {
            weightBytes = try SecureFile.read(dir + "/adapter_model.safetensors", limit: self.maxFileSize)
        } catch {
            throw .file(error)
        }
        let file: SafetensorsFile
        do {
            file = try SafetensorsFile(bytes: weightBytes)
        } catch {
            throw .safetensors(error)
        }
        let weights = try self.buildWeights(file, config: config, path: dir, model: model)
        return LoadedAdapter(path: dir, config: config, weights: weights)
    }

    /// Validates `adapter_config.json` (exposed for tests).
    package static func parseConfig(
        _ bytes: [UInt8], path: String, model: LlamaConfig, maxLoraRank: Int
    ) throws(AdapterLoadError) -> AdapterConfig {
        let root: [String: JSONValue]
        switch JSONValue.parse(Data(bytes)) {
        case .failure(let f): throw .invalidConfig(path: path, reason: "not valid JSON: \(f.message)")
        case .success(let v):
            guard let o = v.objectValue else { throw .invalidConfig(path: path, reason: "not a JSON object") }
            root = o
        }
        if let type = root["peft_type"]?.stringValue, type != "LORA" {
            throw .invalidConfig(path: path, reason: "peft_type is \(type); only LORA adapters are supported")
        }
        guard let rank = root["r"]?.nonNegativeInt, rank > 0 else {
            throw .invalidConfig(path: path, reason: "'r' must be a positive integer")
        }
        let alpha: Double
        switch root["lora_alpha"] {
        case .none, .some(.null): alpha = 8  // PEFT's default.
        case .some(let v):
            guard let a = v.doubleValue else { throw .invalidConfig(path: path, reason: "'lora_alpha' must be a number") }
            alpha = a
        }
        // Same order of checks as vLLM's PEFTHelper.validate_legal.
        let modulesToSave: [String]
        switch root["modules_to_save"] {
        case .none, .some(.null): modulesToSave = []
        case .some(.array(let items)): modulesToSave = items.map { $0.stringValue ?? "\($0)" }
        case .some(let v): modulesToSave = [v.stringValue ?? "\(v)"]
        }
        if !modulesToSave.isEmpty { throw .modulesToSave(modulesToSave) }
        if root["use_dora"]?.boolValue == true { throw .dora }
        if rank > maxLoraRank { throw .rankTooLarge(rank: rank, maxLoraRank: maxLoraRank) }
        let bias = root["bias"]?.stringValue ?? "none"
        if bias != "none" { throw .bias(bias) }
        for key in ["rank_pattern", "alpha_pattern"] {
            if case .object(let o) = root[key], !o.isEmpty {
                throw .invalidConfig(path: path, reason: "'\(key)' (per-module ranks) is not supported")
            }
        }
        if root["fan_in_fan_out"]?.boolValue == true {
            throw .invalidConfig(path: path, reason: "'fan_in_fan_out' is not supported for Llama linear layers")
        }
        let targets = try self.targets(root["target_modules"], path: path, model: model)
        return AdapterConfig(
            rank: rank, alpha: alpha, useRSLoRA: root["use_rslora"]?.boolValue ?? false, targets: targets)
    }

    private static let expectedNames = LinearModule.allCases.map(\.rawValue)

    /// Resolves `target_modules` (list of names/paths, a regex fully matched against
    /// module paths as PEFT does, or `"all-linear"`) to module kinds.
    private static func targets(_ value: JSONValue?, path: String, model: LlamaConfig) throws(AdapterLoadError) -> Set<LinearModule> {
        let allPaths = (0..<model.numLayers).flatMap { l in LinearModule.allCases.map { ($0, $0.path(layer: l)) } }
        switch value {
        case .some(.string("all-linear")):
            return Set(LinearModule.allCases)
        case .some(.string(let pattern)):
            let regex: NSRegularExpression
            do {
                regex = try NSRegularExpression(pattern: pattern)
            } catch {
                throw .invalidConfig(path: path, reason: "target_modules regex '\(pattern)' does not compile")
            }
            var set: Set<LinearModule> = []
            for (module, modulePath) in allPaths {
                let range = NSRange(modulePath.startIndex..., in: modulePath)
                if let m = regex.firstMatch(in: modulePath, options: [.anchored], range: range), m.range == range {
                    set.insert(module)
                }
            }
            guard !set.isEmpty else {
                throw .unexpectedModules(path: path, expected: self.expectedNames, received: [pattern])
            }
            return set
        case .some(.array(let items)):
            var set: Set<LinearModule> = []
            var unexpected: [String] = []
            for item in items {
                guard let name = item.stringValue else {
                    throw .invalidConfig(path: path, reason: "target_modules must contain strings")
                }
                // PEFT matches a list entry against the end of the module path.
                let matches = allPaths.filter { $0.1 == name || $0.1.hasSuffix("." + name) }
                if matches.isEmpty { unexpected.append(name) } else { set.formUnion(matches.map(\.0)) }
            }
            if !unexpected.isEmpty {
                throw .unexpectedModules(path: path, expected: self.expectedNames, received: unexpected)
            }
            guard !set.isEmpty else { throw .invalidConfig(path: path, reason: "target_modules is empty") }
            return set
        default:
            throw .invalidConfig(path: path, reason: "target_modules must be a list, a regex string or \"all-linear\"")
        }
    }

    package static func buildWeights(
        _ file: SafetensorsFile, config: AdapterConfig, path: String, model: LlamaConfig
    ) throws(AdapterLoadError) -> LoRAWeights {
        guard !file.tensors.isEmpty else { throw .noTensors(path: path) }
        var byPath: [String: (layer: Int, module: LinearModule)] = [:]
        for l in 0..<model.numLayers {
            for m in LinearModule.allCases { byPath[m.path(layer: l)] = (l, m) }
        }
        var aTensors: [String: HostTensor] = [:]
        var bTensors: [String: HostTensor] = [:]
        var unexpected: Set<String> = []
        for name in file.tensors.keys.sorted() {
            var key = name
            if key.hasPrefix("base_model.model.") { key.removeFirst("base_model.model.".count) }
            let isA: Bool
            if key.hasSuffix(".lora_A.weight") {
                isA = true
                key.removeLast(".lora_A.weight".count)
            } else if key.hasSuffix(".lora_B.weight") {
                isA = false
                key.removeLast(".lora_B.weight".count)
            } else {
                unexpected.insert(String(name.split(separator: ".").dropLast().last ?? Substring(name)))
                continue
            }
            guard let target = byPath[key], config.targets.contains(target.module) else {
                unexpected.insert(String(key.split(separator: ".").last ?? Substring(key)))
                continue
            }
            let floats: (shape: [Int], values: [Float])
            do {
                floats = try file.floats(name)
            } catch {
                throw .safetensors(error)
            }
            let shape = target.module.shape(model)  // [out, in]
            let expected = isA ? [config.rank, shape[1]] : [shape[0], config.rank]
            guard floats.shape == expected else {
                throw .shapeMismatch(tensor: name, expected: expected, actual: floats.shape)
            }
            let tensor = HostTensor(shape: floats.shape, values: floats.values)
            if isA { aTensors[key] = tensor } else { bTensors[key] = tensor }
        }
        if !unexpected.isEmpty {
            throw .unexpectedModules(path: path, expected: self.expectedNames, received: unexpected.sorted())
        }
        guard !aTensors.isEmpty || !bTensors.isEmpty else { throw .noTensors(path: path) }
        var pairs = [[LoRAPair?]](repeating: [LoRAPair?](repeating: nil, count: LinearModule.allCases.count), count: model.numLayers)
        for key in Set(aTensors.keys).union(bTensors.keys).sorted() {
            guard let a = aTensors[key], let b = bTensors[key], let target = byPath[key] else {
                throw .incompletePair(module: key)
            }
            pairs[target.layer][target.module.index] = LoRAPair(
                a: FloatTensor(shape: a.shape, values: a.values), b: FloatTensor(shape: b.shape, values: b.values))
        }
        return LoRAWeights(rank: config.rank, scaling: config.scaling, pairs: pairs)
    }
}
