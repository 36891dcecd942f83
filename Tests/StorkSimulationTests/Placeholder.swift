import Testing

@Test func placeholderStorkSimulationTests() {}
