import Testing

@Test func placeholderStorkResourcesTests() {}
