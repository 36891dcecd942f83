import Testing

@Test func placeholderStorkMembershipTests() {}
