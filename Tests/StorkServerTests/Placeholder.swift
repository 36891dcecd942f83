import Testing

@Test func storkServerPlaceholder() {}
