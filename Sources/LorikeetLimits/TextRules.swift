/// Rules for short identifiers and paths that cross process boundaries (adapter names,
/// paths, base model names): a byte limit, and no characters that change meaning at a
/// C boundary (NUL truncates), in a log line (newlines forge records) or on a screen
/// (bidirectional controls reorder what an operator reads).
package enum TextRules {
    /// Why `value` is not an acceptable `field`, or nil. The reason never repeats the value.
    package static func problem(_ value: String, field: String, maxBytes: Int, allowEmpty: Bool = false) -> String? {
        let count = value.utf8.count
        if count == 0 && !allowEmpty { return "'\(field)' must not be empty." }
        if count > maxBytes { return "'\(field)' is \(count) bytes long; the limit is \(maxBytes) bytes." }
        for scalar in value.unicodeScalars where Self.isForbidden(scalar) {
            let code = String(scalar.value, radix: 16, uppercase: true)
            let padded = String(repeating: "0", count: max(0, 4 - code.count)) + code
            return "'\(field)' must not contain control or bidirectional formatting characters (found U+\(padded))."
        }
        return nil
    }

    /// NUL and other C0 controls, DEL, C1 controls, line/paragraph separators and the
    /// Unicode bidirectional formatting characters.
    package static func isForbidden(_ scalar: Unicode.Scalar) -> Bool {
        switch scalar.value {
        case 0x00...0x1F, 0x7F...0x9F: true
        case 0x2028, 0x2029: true
        case 0x061C, 0x200E, 0x200F, 0x202A...0x202E, 0x2066...0x2069: true
        default: false
        }
    }
}
