import Testing

@Test func placeholderStorkPlacementTests() {}
