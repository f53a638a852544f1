import Foundation
import LorikeetProto
import Testing

@Suite("Process table (/proc)")
struct ProcessTableTests {
    @Test("a started child is listed under its parent and names it as parent; absent pids read as nothing")
    func parentsAndChildren() throws {
        let child = Process()
        child.executableURL = URL(fileURLWithPath: "/bin/sleep")
        child.arguments = ["30"]
        try child.run()
        defer {
            kill(child.processIdentifier, SIGKILL)
            child.waitUntilExit()
        }
        #expect(ProcessTable.parent(of: child.processIdentifier) == getpid())
        #expect(ProcessTable.children(of: getpid()).contains(child.processIdentifier))
        #expect(ProcessTable.parent(of: getpid()) == getppid())
        #expect(ProcessTable.parent(of: 0) == nil && ProcessTable.parent(of: -1) == nil)
        #expect(ProcessTable.children(of: 0).isEmpty)
    }
}
