import Foundation
import LorikeetProto
import Testing

@Suite("Exit codes")
struct ExitCodeTests {
    static let repoRoot = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    @Test("README.md and ops/README.md list exactly the codes of LorikeetExitCode", arguments: ["README.md", "ops/README.md"])
    func documented(_ file: String) throws {
        let text = try String(contentsOf: Self.repoRoot.appendingPathComponent(file), encoding: .utf8)
        // Rows of the "Exit codes" table: `| 78 | `cannotBoot` | ...`.
        var rows: [Int32: String] = [:]
        for line in text.split(separator: "\n") where line.hasPrefix("| ") {
            let cells = line.split(separator: "|").map { $0.trimmingCharacters(in: .whitespaces) }
            guard cells.count >= 2, let code = Int32(cells[0]) else { continue }
            rows[code] = cells[1].trimmingCharacters(in: CharacterSet(charactersIn: "`"))
        }
        let expected = Dictionary(uniqueKeysWithValues: LorikeetExitCode.allCases.map { ($0.rawValue, "\($0)") })
        #expect(rows == expected, "\(file)'s exit code table differs from LorikeetExitCode")
    }
}
