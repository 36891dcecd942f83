// MARK: - StorkGateway
//
// The realtime gateway's I/O: the WebSocket and HTTP endpoints apps and browsers use (JSON protocol v1), the relay
// that carries gateway subjects between the nodes of the cluster, listening providers and runners placed as
// resources. The decisions (who may do what, how credentials are checked, how a runner graph executes) live in the
// pure `StorkRealtime` target; this target wires them to sockets, the node's NATS router and the resource manager.
