import AsyncHTTPClient
import NIOCore
import StorkCore
import StorkRealtime

// MARK: - The auth webhook's transport
//
// `HTTPAuthenticator` (in StorkRealtime) decides; this type only carries its POST over AsyncHTTPClient. A body larger
// than `maxBodyBytes` is an error (the authenticator rejects), so a misbehaving app cannot make the gateway buffer
// without bound.

/// POSTs the webhook authenticator's requests with an AsyncHTTPClient the gateway owns (and shuts down).
public struct HTTPAuthenticationTransport: AuthenticationHTTPTransport {
    public let client: HTTPClient
    /// The largest response body read; a larger one fails the request.
    public var maxBodyBytes: Int

    public init(client: HTTPClient, maxBodyBytes: Int = 64 * 1024) {
        self.client = client
        self.maxBodyBytes = maxBodyBytes
    }

    public func post(
        url: String,
        headers: [String: String],
        body: [UInt8],
        timeout: Duration
    ) async throws
        -> AuthenticationHTTPResponse
    {
        var request = HTTPClientRequest(url: url)
        request.method = .POST
        for (name, value) in headers.sorted(by: { $0.key < $1.key }) {
            request.headers.replaceOrAdd(name: name, value: value)
        }
        request.body = .bytes(ByteBuffer(bytes: body))
        let deadline = NIODeadline.now() + .nanoseconds(timeout.nanosecondsClamped)
        let response = try await self.client.execute(request, deadline: deadline)
        let buffer = try await response.body.collect(upTo: self.maxBodyBytes)
        return AuthenticationHTTPResponse(status: Int(response.status.code), body: Array(buffer.readableBytesView))
    }
}
