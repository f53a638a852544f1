import Glibc
import Logging
import LorikeetProto

/// The cluster agent process and its channel (fleet mode), as the supervisor holds them.
final class ClusterAgentProcess {
    var process: UVProcess?
    var control: UVPipe?
    var decoder = MessageDecoder<ClusterEnvelope>(maximumFrameSize: Limits.channelFrameBytes)

    /// Writes one frame; false when the channel is gone or the message is over the frame limit.
    @discardableResult
    func send(_ envelope: ClusterEnvelope) -> Bool {
        let payload = envelope.serializedBytes()
        guard payload.count <= Limits.channelFrameBytes, let control = self.control else { return false }
        control.write(Frame.encode(payload))
        return true
    }
}

extension Supervisor {
    // MARK: - Cluster agent (fleet mode)

    func startClusterAgent() {
        self.perform(self.machine.startClusterAgent(now: self.nowMs))
    }

    /// The `spawnClusterAgent` action: `lorikeet cluster-agent` with the cluster channel on fd 3.
    func spawnClusterAgent() {
        guard let settings = self.configuration.cluster else { return }
        let pair: (Int32, Int32)
        do {
            pair = try SupervisorSockets.controlPair()
        } catch {
            self.logger.error("cannot create the cluster channel: \(error)")
            return self.perform(self.machine.clusterAgentExited(ProcessExit(status: -1, signal: 0), now: self.nowMs))
        }
        let agent = ClusterAgentProcess()
        let arguments =
            [self.configuration.executable, "cluster-agent", "--control-fd", "3"] + settings.agentArguments
            + ["--parent-pid", "\(getpid())"] + self.configuration.agentArguments
        do {
            let environment = ChildEnvironment.make(removing: self.configuration.engineEnvironmentRemovals)
            agent.process = try UVProcess.spawn(loop: self.loop, arguments: arguments, environment: environment, extraFDs: [pair.1]) {
                [unowned self, unowned agent] exit in
                agent.process = nil
                agent.control?.close()
                agent.control = nil
                if self.clusterAgent === agent { self.clusterAgent = nil }
                // `ctl nodes` calls in the dead agent's hands are answered, not left hanging.
                let waiting = self.nodesReplies
                self.nodesReplies = [:]
                for reply in waiting.values { reply(ClusterNodesReply(status: SupervisorStateMachine.agentGone)) }
                self.perform(self.machine.clusterAgentExited(exit, now: self.nowMs))
            }
        } catch {
            close(pair.0)
            close(pair.1)
            self.logger.error("cannot spawn the cluster agent: \(error)")
            return self.perform(self.machine.clusterAgentExited(ProcessExit(status: -1, signal: 0), now: self.nowMs))
        }
        close(pair.1)
        self.clusterAgent = agent
        do {
            let pipe = try UVPipe(loop: self.loop, fd: pair.0)
            agent.control = pipe
            pipe.startReading(
                onData: { [unowned self, unowned agent] bytes in self.clusterBytes(bytes, from: agent) },
                onEnd: { [unowned agent] _ in
                    agent.control?.close()
                    agent.control = nil
                    agent.process?.kill(SIGKILL)
                })
        } catch {
            close(pair.0)
            agent.process?.kill(SIGKILL)
        }
        self.machine.clusterAgentStarted()
        self.logger.info("cluster agent started", metadata: ["pid": "\(agent.process?.pid ?? 0)", "node": "\(settings.nodeName)"])
    }

    /// Bytes from the agent. A frame that is not a cluster message is dropped; a framing
    /// error kills the agent (it is restarted like any exit).
    func clusterBytes(_ bytes: [UInt8], from agent: ClusterAgentProcess) {
        agent.decoder.feed(bytes)
        while agent.control != nil {
            let envelope: ClusterEnvelope?
            do {
                envelope = try agent.decoder.next()
            } catch .invalidMessage(let error) {
                self.logger.error("dropped a cluster frame that is not a cluster message: \(error)")
                continue
            } catch {
                self.logger.error("closing the cluster channel: \(error)")
                agent.control?.close()
                agent.control = nil
                agent.process?.kill(SIGKILL)
                return
            }
            guard let envelope else { return }
            self.handle(envelope)
        }
    }

    private func handle(_ envelope: ClusterEnvelope) {
        switch envelope.body {
        case .table(let table):
            self.perform(self.machine.clusterTableReceived(table, now: self.nowMs))
        case .reserveReply(let reply):
            self.perform(self.machine.clusterReserved(routeID: envelope.callID, reply))
        case .commitReply(let reply):
            self.perform(self.machine.clusterCommitReplied(callID: envelope.callID, reply))
        case .nodesReply(let reply):
            self.nodesReplies.removeValue(forKey: envelope.callID)?(reply)
        case .fence(let fence):
            self.perform(self.machine.clusterFenceReceived(fence))
        case .applied, .reserve, .commit, .nodes, .none:
            self.logger.warning("unexpected cluster message", metadata: ["call.id": "\(envelope.callID)"])
        }
    }

    /// Asks the agent for the fleet's nodes (`lorikeet ctl nodes`).
    func requestNodes(_ reply: @escaping (ClusterNodesReply) -> Void) {
        guard self.configuration.cluster != nil else {
            return reply(
                ClusterNodesReply(status: Status(code: .failedPrecondition, message: "not in fleet mode (serve --cluster-endpoints)")))
        }
        let callID = self.nextAdminToken
        self.nextAdminToken += 1
        guard let agent = self.clusterAgent, agent.send(ClusterEnvelope(callID: callID, body: .nodes(ClusterNodesRequest()))) else {
            return reply(ClusterNodesReply(status: SupervisorStateMachine.agentGone))
        }
        self.nodesReplies[callID] = reply
    }
}
