import Foundation
import NIOCore
import StorkBus

// MARK: - Writing protocol lines

extension ByteBuffer {
    /// `MSG <subject> <sid> [reply] <#bytes>\r\n<payload>\r\n`, or `HMSG … <#header bytes> <#total bytes>` when
    /// there are headers.
    @inlinable
    public mutating func writeNATSMessage(
        subject: String,
        sid: String,
        replyTo: String?,
        headers: ByteBuffer?,
        payload: ByteBuffer
    ) {
        self.writeNATSFrame(
            operation: (headers?.readableBytes ?? 0) > 0 ? "HMSG " : "MSG ",
            subject: subject,
            sid: sid,
            replyTo: replyTo,
            headers: headers,
            payload: payload
        )
    }

    /// `PUB <subject> [reply] <#bytes>\r\n<payload>\r\n`, or `HPUB` with headers (Stork's own client).
    @inlinable
    public mutating func writeNATSPublish(subject: String, replyTo: String?, headers: ByteBuffer?, payload: ByteBuffer) {
        self.writeNATSFrame(
            operation: (headers?.readableBytes ?? 0) > 0 ? "HPUB " : "PUB ",
            subject: subject,
            sid: nil,
            replyTo: replyTo,
            headers: headers,
            payload: payload
        )
    }

    /// One frame, `<operation><subject> [sid] [reply] [#header bytes] #bytes\r\n<headers><payload>\r\n`, written
    /// into one reservation of the buffer: a frame per delivered message makes piecewise writes (each one a
    /// capacity check and an exclusivity check on the storage) a large part of fan-out.
    @usableFromInline
    mutating func writeNATSFrame(
        operation: StaticString,
        subject: String,
        sid: String?,
        replyTo: String?,
        headers: ByteBuffer?,
        payload: ByteBuffer
    ) {
        let headerCount = headers.map { $0.readableBytes } ?? 0
        let payloadCount = payload.readableBytes
        // Fields and separators, two decimals of at most 20 digits, CRLFs.
        let reserve = operation.utf8CodeUnitCount + subject.utf8.count + (sid?.utf8.count ?? 0)
            + (replyTo?.utf8.count ?? 0) + headerCount + payloadCount + 3 + 42 + 4
        self.writeWithUnsafeMutableBytes(minimumWritableBytes: reserve) { out in
            var frame = NATSFrameWriter(out: out)
            operation.withUTF8Buffer { frame.put(UnsafeRawBufferPointer($0)) }
            frame.put(subject)
            frame.put(byte: UInt8(ascii: " "))
            if let sid {
                frame.put(sid)
                frame.put(byte: UInt8(ascii: " "))
            }
            if let replyTo {
                frame.put(replyTo)
                frame.put(byte: UInt8(ascii: " "))
            }
            if headerCount > 0 {
                frame.put(decimal: headerCount)
                frame.put(byte: UInt8(ascii: " "))
                frame.put(decimal: headerCount + payloadCount)
            } else {
                frame.put(decimal: payloadCount)
            }
            frame.put(byte: UInt8(ascii: "\r"))
            frame.put(byte: UInt8(ascii: "\n"))
            if headerCount > 0, let headers { headers.withUnsafeReadableBytes { frame.put($0) } }
            payload.withUnsafeReadableBytes { frame.put($0) }
            frame.put(byte: UInt8(ascii: "\r"))
            frame.put(byte: UInt8(ascii: "\n"))
            return frame.written
        }
    }

    /// `-ERR '<message>'\r\n`.
    public mutating func writeNATSError(_ error: NATSProtocolError) {
        self.writeStaticString("-ERR '")
        self.writeString(error.message)
        self.writeStaticString("'\r\n")
    }
}

/// Copies the pieces of one frame into reserved bytes. A struct rather than nested functions: closures capturing a
/// mutable offset would box it and check exclusive access on every write.
@usableFromInline
struct NATSFrameWriter {
    let out: UnsafeMutableRawBufferPointer
    private(set) var written = 0

    init(out: UnsafeMutableRawBufferPointer) {
        self.out = out
    }

    mutating func put(_ bytes: UnsafeRawBufferPointer) {
        guard let source = bytes.baseAddress, !bytes.isEmpty else { return }
        (self.out.baseAddress! + self.written).copyMemory(from: source, byteCount: bytes.count)
        self.written += bytes.count
    }

    mutating func put(_ string: String) {
        var string = string
        string.withUTF8 { self.put(UnsafeRawBufferPointer($0)) }
    }

    mutating func put(byte: UInt8) {
        self.out[self.written] = byte
        self.written += 1
    }

    mutating func put(decimal value: Int) {
        var digits = 1
        var rest = value / 10
        while rest > 0 {
            digits += 1
            rest /= 10
        }
        var remaining = value
        var position = self.written + digits - 1
        while position >= self.written {
            self.out[position] = UInt8(truncatingIfNeeded: remaining % 10) + UInt8(ascii: "0")
            remaining /= 10
            position -= 1
        }
        self.written += digits
    }
}

// MARK: - INFO and CONNECT

/// The JSON a server sends in `INFO`: the fields clients read (nats-py uses `max_payload`, `headers`, `version`,
/// `client_id`, `auth_required`, `nonce`, `connect_urls`, `ldm`).
public struct NATSServerInfo: Codable, Sendable, Equatable {
    public var serverID: String
    public var serverName: String
    /// A NATS-compatible version: clients switch JetStream features on it (nats-py needs ≥ 2.9 for the modern
    /// consumer API).
    public var version: String
    public var go: String
    public var host: String
    public var port: Int
    public var headers: Bool
    public var maxPayload: Int
    public var proto: Int
    public var clientID: UInt64?
    public var clientIP: String?
    public var authRequired: Bool?
    public var jetstream: Bool?
    public var connectURLs: [String]?
    /// Lame-duck mode: the server is about to close this connection; the client should move to another server.
    public var lameDuckMode: Bool?

    enum CodingKeys: String, CodingKey {
        case serverID = "server_id"
        case serverName = "server_name"
        case version, go, host, port, headers
        case maxPayload = "max_payload"
        case proto
        case clientID = "client_id"
        case clientIP = "client_ip"
        case authRequired = "auth_required"
        case jetstream
        case connectURLs = "connect_urls"
        case lameDuckMode = "ldm"
    }

    public init(
        serverID: String,
        serverName: String,
        version: String,
        host: String,
        port: Int,
        maxPayload: Int
    ) {
        self.serverID = serverID
        self.serverName = serverName
        self.version = version
        self.go = "stork"
        self.host = host
        self.port = port
        self.headers = true
        self.maxPayload = maxPayload
        self.proto = 1
    }
}

/// The JSON a client sends in `CONNECT`. Every field is optional and unknown fields are ignored, in any order.
public struct NATSConnectOptions: Codable, Sendable, Equatable {
    public var verbose: Bool?
    public var pedantic: Bool?
    public var tlsRequired: Bool?
    public var authToken: String?
    public var user: String?
    public var pass: String?
    public var name: String?
    public var lang: String?
    public var version: String?
    public var `protocol`: Int?
    public var echo: Bool?
    public var headers: Bool?
    public var noResponders: Bool?

    enum CodingKeys: String, CodingKey {
        case verbose, pedantic
        case tlsRequired = "tls_required"
        case authToken = "auth_token"
        case user, pass, name, lang, version
        case `protocol`
        case echo, headers
        case noResponders = "no_responders"
    }

    public init() {}

    /// Decodes the JSON of a `CONNECT` line; malformed JSON is a protocol error.
    public static func decode(_ json: ByteBuffer) throws(NATSProtocolError) -> NATSConnectOptions {
        do {
            return try JSONDecoder().decode(NATSConnectOptions.self, from: Data(json.readableBytesView))
        } catch {
            throw NATSProtocolError("Parser Error")
        }
    }
}
