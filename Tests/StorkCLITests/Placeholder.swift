import Testing

@Test func placeholderStorkCLITests() {}
