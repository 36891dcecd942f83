import Testing

@testable import StorkGateway

@Suite("Gateway module")
struct GatewayModuleTests {
    @Test("the module builds and links")
    func links() {
        #expect(Bool(true))
    }
}
