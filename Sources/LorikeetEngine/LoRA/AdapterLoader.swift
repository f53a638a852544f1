import Foundation
package import LorikeetGGUF
import LorikeetJSON
import LorikeetLimits

/// Why a PEFT LoRA adapter was refused. Messages use vLLM's wording where vLLM has one
/// (rank, DoRA, `modules_to_save`, bias, unexpected target modules), so clients that
/// match on them keep working. Values taken from the adapter files are repeated only
/// in bounded form.
package enum AdapterLoadError: Error, Equatable, CustomStringConvertible, Sendable {
    /// The directory or a file in it could not be opened safely (not allowed, missing,
    /// not a regular file, too large).
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
    /// A `target_modules` regex outside the supported subset (see `TargetModulePattern`).
    case unsupportedPattern(reason: String)
    /// `adapter_model.safetensors` is larger than rank × model dimensions allow.
    case weightsTooLarge(size: Int, limit: Int, rank: Int)
    /// `adapter_model.safetensors` is malformed or truncated.
    case safetensors(SafetensorsError)
    /// The weights file holds no LoRA tensors.
    case noTensors(path: String)
    /// A `lora_A`/`lora_B` tensor has the wrong shape for the model and rank.
    case shapeMismatch(tensor: String, expected: [Int], actual: [Int])
    /// A tensor holds NaN or an infinity.
    case nonFinite(tensor: String)
    /// Two tensors name the same module's `lora_A` (or `lora_B`).
    case duplicateTensor(tensor: String)
    /// A module has `lora_A` without `lora_B` or the reverse.
    case incompletePair(module: String)

    package var description: String {
        switch self {
        case .file(let e): "cannot load LoRA adapter: \(e)"
        case .invalidConfig(let path, let reason): "invalid adapter_config.json in \(path.echoed()): \(reason)"
        case .rankTooLarge(let rank, let max): "LoRA rank \(rank) is greater than max_lora_rank \(max)."
        case .dora: "This engine does not yet support DoRA (use_dora is true)."
        case .modulesToSave(let m): "This engine only supports modules_to_save being None (got \(Self.shown(m)))."
        case .bias(let b):
            "Adapter bias cannot be used without bias_enabled (bias is \"\(b.echoed(limit: 64))\"; only \"none\" is supported)."
        case .unexpectedModules(let path, let expected, let received):
            "While loading \(path.echoed()), expected target modules in \(expected) but received \(Self.shown(received)). Please verify that the loaded LoRA module is correct"
        case .unsupportedPattern(let reason):
            "target_modules is a regular expression this engine cannot match safely: \(reason). Supported: literals, '.', "
                + "[classes], \\d \\w \\s, groups, '|', '*', '+', '?', {m,n} and the anchors '^' and '$'; or give a list of module names."
        case .weightsTooLarge(let size, let limit, let rank):
            "adapter_model.safetensors is \(size) bytes; a rank-\(rank) adapter of this model's target modules needs at most \(limit) bytes"
        case .safetensors(let e): "adapter_model.safetensors: \(e)"
        case .noTensors(let path): "adapter_model.safetensors in \(path.echoed()) contains no LoRA tensors"
        case .shapeMismatch(let t, let expected, let actual):
            "LoRA tensor '\(t.echoed(limit: 128))' has shape \(actual), expected \(expected) for this model"
        case .nonFinite(let t): "LoRA tensor '\(t.echoed(limit: 128))' contains NaN or infinite values"
        case .duplicateTensor(let t): "LoRA tensor '\(t.echoed(limit: 128))' appears twice (with and without the base_model.model. prefix)"
        case .incompletePair(let m): "LoRA module '\(m.echoed(limit: 128))' needs both lora_A and lora_B weights"
        }
    }

    /// A list from an adapter file, bounded for a message: the first 16 entries, each cut.
    private static func shown(_ items: [String]) -> String {
        let head = items.prefix(16).map { $0.echoed(limit: 64) }
        let more = items.count > 16 ? " and \(items.count - 16) more" : ""
        return "\(head)\(more)"
    }

    /// The engine-boundary error: INVALID_ARGUMENT for every refusal of the adapter,
    /// NOT_FOUND for a missing path, INTERNAL for an I/O failure; the file details (paths,
    /// errno, symlinks) go to `logDetail`, never into the message.
    package var engineError: EngineError {
        switch self {
        case .file(let e):
            let code: EngineError.Code =
                switch e {
                case .notFound: .notFound
                case .io: .internal
                default: .invalidArgument
                }
            return EngineError(code, self.description, logDetail: e.detail)
        default: return EngineError(.invalidArgument, self.description)
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
    /// Largest `adapter_config.json`.
    package static let maxConfigBytes = 1 << 20
    /// Room for the safetensors header (tensor names, offsets, `__metadata__`) on top of
    /// the tensor data in the weights-file bound.
    package static let weightsHeaderSlack = 1 << 20
    /// Largest accepted `lora_alpha` (PEFT adapters use 1...512 in practice; 1e300 made
    /// every completion empty). `lora_alpha` must be finite and greater than 0.
    package static let maxAlpha = 10_000.0

    /// The largest `adapter_model.safetensors` a rank-`rank` adapter of `targets` on
    /// `model` can need: `r × (in + out)` elements per targeted module and layer, at 4
    /// bytes (F32, the widest accepted dtype), plus `weightsHeaderSlack`.
    package static func maxWeightsBytes(rank: Int, targets: Set<LinearModule>, model: LlamaConfig) -> Int {
        var elements = 0
        for module in targets {
            let shape = module.shape(model)
            elements = elements.addingClamped(rank.multipliedClamped(shape[0].addingClamped(shape[1])))
        }
        return elements.multipliedClamped(model.numLayers).multipliedClamped(4).addingClamped(self.weightsHeaderSlack)
    }

    /// Reads and validates the adapter in `path` for `model`.
    ///
    /// The directory is opened by a walk from the allowed prefix that contains it
    /// (`SecureFile.openDirectory`: no symbolic link in any component, no `..`); with no
    /// prefixes the walk starts at `/`. Both files must be regular files; the config is
    /// read only up to `maxConfigBytes`, the weights only up to `maxWeightsBytes` for the
    /// config's rank and targets, both checked with `fstat` before a byte is read.
    package static func load(
        path: String, model: LlamaConfig, maxLoraRank: Int, allowedPrefixes: [String] = []
    ) throws(AdapterLoadError) -> LoadedAdapter {
        let directory: SecureDirectory
        let configBytes: [UInt8]
        do {
            directory = try SecureFile.openDirectory(path, allowedPrefixes: allowedPrefixes)
            configBytes = try SecureFile.read("adapter_config.json", in: directory, limit: self.maxConfigBytes)
        } catch {
            throw .file(error)
        }
        let dir = directory.path
        let config = try self.parseConfig(configBytes, path: dir, model: model, maxLoraRank: maxLoraRank)
        let limit = self.maxWeightsBytes(rank: config.rank, targets: config.targets, model: model)
        let weightBytes: [UInt8]
        do {
            weightBytes = try SecureFile.read("adapter_model.safetensors", in: directory, limit: limit)
        } catch .tooLarge(_, let size, let limit) {
            throw .weightsTooLarge(size: size, limit: limit, rank: config.rank)
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
        guard bytes.count <= self.maxConfigBytes else {
            throw .invalidConfig(path: path, reason: "the file is \(bytes.count) bytes; the limit is \(self.maxConfigBytes)")
        }
        let parsed: JSONValue
        do {
            parsed = try JSONParser.parse(bytes)
        } catch {
            // Name the field when the syntax error is inside one ('lora_alpha': 1e400).
            let member = error.member.map { " in '\($0.echoed(limit: 64))'" } ?? ""
            throw .invalidConfig(path: path, reason: "not valid JSON: \(error)\(member)")
        }
        // Duplicate keys: the last one counts, as with PEFT's json.load.
        guard let root = parsed.objectValue else { throw .invalidConfig(path: path, reason: "not a JSON object") }
        if let type = root["peft_type"]?.stringValue, type != "LORA" {
            throw .invalidConfig(
                path: path, reason: "peft_type is \(type.echoed(limit: 64)); only LORA adapters are supported")
        }
        guard let rank = root["r"]?.nonNegativeInt, rank > 0 else {
            throw .invalidConfig(path: path, reason: "'r' must be a positive integer")
        }
        let alpha: Double
        switch root["lora_alpha"] {
        case .none, .some(.null): alpha = 8  // PEFT's default.
        case .some(let v):
            // JSON has no NaN or infinity, but a number too large for a Double decodes as one.
            guard let a = v.doubleValue, a.isFinite, a > 0, a <= self.maxAlpha else {
                throw .invalidConfig(
                    path: path,
                    reason: "'lora_alpha' must be a finite number greater than 0 and at most \(Int(self.maxAlpha)), got \(Self.shown(v))")
            }
            alpha = a
        }
        let useRSLoRA: Bool
        switch root["use_rslora"] {
        case .none, .some(.null): useRSLoRA = false
        case .some(.bool(let b)): useRSLoRA = b
        case .some: throw .invalidConfig(path: path, reason: "'use_rslora' must be true or false")
        }
        // Same order of checks as vLLM's PEFTHelper.validate_legal.
        let modulesToSave: [String]
        switch root["modules_to_save"] {
        case .none, .some(.null): modulesToSave = []
        case .some(.array(let items)): modulesToSave = items.map { $0.stringValue ?? Self.shown($0) }
        case .some(let v): modulesToSave = [v.stringValue ?? Self.shown(v)]
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
        let config = AdapterConfig(rank: rank, alpha: alpha, useRSLoRA: useRSLoRA, targets: targets)
        guard config.scaling.isFinite, config.scaling > 0 else {
            throw .invalidConfig(path: path, reason: "'lora_alpha' \(alpha) with r=\(rank) gives an unusable scale")
        }
        return config
    }

    /// A JSON value from the file, bounded for a message.
    private static func shown(_ value: JSONValue) -> String {
        switch value {
        case .null: "null"
        case .bool(let b): "\(b)"
        case .int(let i): "\(i)"
        case .double(let d): "\(d)"
        case .string(let s): "\"\(s.echoed(limit: 64))\""
        case .array(let a): "an array of \(a.count)"
        case .object(let o): "an object of \(o.count) members"
        }
    }

    private static let expectedNames = LinearModule.allCases.map(\.rawValue)

    /// Resolves `target_modules` (list of names/paths, a regex fully matched against
    /// module paths as PEFT does, or `"all-linear"`) to module kinds. Regexes run on the
    /// linear-time `TargetModulePattern`, never on a backtracking engine; list entries are
    /// looked up in a table of every module path's dotted suffixes (constant work each).
    private static func targets(_ value: JSONValue?, path: String, model: LlamaConfig) throws(AdapterLoadError) -> Set<LinearModule> {
        let allPaths = (0..<model.numLayers).flatMap { l in LinearModule.allCases.map { ($0, $0.path(layer: l)) } }
        switch value {
        case .some(.string("all-linear")):
            return Set(LinearModule.allCases)
        case .some(.string(let pattern)):
            let matcher: TargetModulePattern
            do {
                matcher = try TargetModulePattern(pattern)
            } catch {
                throw .unsupportedPattern(reason: error.reason)
            }
            var set: Set<LinearModule> = []
            for (module, modulePath) in allPaths where !set.contains(module) {
                if matcher.fullMatch(modulePath) { set.insert(module) }
            }
            guard !set.isEmpty else {
                throw .unexpectedModules(path: path, expected: self.expectedNames, received: [pattern])
            }
            return set
        case .some(.array(let items)):
            // PEFT matches a list entry against the whole module path or a dotted suffix of it.
            var bySuffix: [String: Set<LinearModule>] = [:]
            for (module, modulePath) in allPaths {
                let parts = modulePath.split(separator: ".")
                for start in parts.indices {
                    bySuffix[parts[start...].joined(separator: "."), default: []].insert(module)
                }
            }
            var set: Set<LinearModule> = []
            var unexpected: [String] = []
            for item in items {
                guard let name = item.stringValue else {
                    throw .invalidConfig(path: path, reason: "target_modules must contain strings")
                }
                if let modules = bySuffix[name] { set.formUnion(modules) } else { unexpected.append(name) }
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
            let shape = target.module.shape(model)  // [out, in]
            let expected = isA ? [config.rank, shape[1]] : [shape[0], config.rank]
            // The shape is checked from the header before the data is converted.
            if let info = file.tensors[name], info.shape != expected {
                throw .shapeMismatch(tensor: name, expected: expected, actual: info.shape)
            }
            let floats: (shape: [Int], values: [Float])
            do {
                floats = try file.floats(name)
            } catch {
                throw .safetensors(error)
            }
            guard floats.shape == expected else {
                throw .shapeMismatch(tensor: name, expected: expected, actual: floats.shape)
            }
            guard floats.values.allSatisfy(\.isFinite) else { throw .nonFinite(tensor: name) }
            guard (isA ? aTensors[key] : bTensors[key]) == nil else { throw .duplicateTensor(tensor: name) }
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

extension Int {
    fileprivate func addingClamped(_ other: Int) -> Int {
        let (value, overflow) = self.addingReportingOverflow(other)
        return overflow ? Int.max : value
    }

    fileprivate func multipliedClamped(_ other: Int) -> Int {
        let (value, overflow) = self.multipliedReportingOverflow(by: other)
        return overflow ? Int.max : value
    }
}
