/// Standard base64 (RFC 4648 §4, with padding): the gateway's encoding of protobuf `bytes`
/// fields (keys and values). The decoder is strict: wrong length, characters outside the
/// alphabet or non-zero padding bits are refused (nil).
enum Base64 {
    private static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
    private static let reverse: [UInt8] = {
        var table = [UInt8](repeating: 0xFF, count: 256)
        for (index, character) in alphabet.enumerated() { table[Int(character)] = UInt8(index) }
        return table
    }()

    static func encode(_ bytes: some Collection<UInt8>) -> String {
        var output = [UInt8]()
        output.reserveCapacity((bytes.count + 2) / 3 * 4)
        var iterator = bytes.makeIterator()
        while let first = iterator.next() {
            let second = iterator.next()
            let third = iterator.next()
            let word = UInt32(first) << 16 | UInt32(second ?? 0) << 8 | UInt32(third ?? 0)
            output.append(self.alphabet[Int(word >> 18 & 63)])
            output.append(self.alphabet[Int(word >> 12 & 63)])
            output.append(second == nil ? UInt8(ascii: "=") : self.alphabet[Int(word >> 6 & 63)])
            output.append(third == nil ? UInt8(ascii: "=") : self.alphabet[Int(word & 63)])
        }
        return String(decoding: output, as: UTF8.self)
    }

    static func decode(_ text: String) -> [UInt8]? {
        let input = Array(text.utf8)
        guard input.count % 4 == 0 else { return nil }
        var output = [UInt8]()
        output.reserveCapacity(input.count / 4 * 3)
        var index = 0
        while index < input.count {
            let isLast = index + 4 == input.count
            let padding = isLast ? (input[index + 3] == UInt8(ascii: "=") ? (input[index + 2] == UInt8(ascii: "=") ? 2 : 1) : 0) : 0
            var word: UInt32 = 0
            for offset in 0..<4 {
                let character = input[index + offset]
                let value: UInt8
                if offset >= 4 - padding {
                    value = 0
                } else {
                    value = self.reverse[Int(character)]
                    guard value != 0xFF else { return nil }
                }
                word = word << 6 | UInt32(value)
            }
            let bytes = [UInt8(word >> 16 & 0xFF), UInt8(word >> 8 & 0xFF), UInt8(word & 0xFF)]
            // Bits under the padding must be zero (canonical encoding).
            if padding == 2 && bytes[1] != 0 || padding == 1 && bytes[2] != 0 { return nil }
            output.append(contentsOf: bytes[0..<(3 - padding)])
            index += 4
        }
        return output
    }
}
