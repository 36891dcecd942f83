// StorkStreamStores: the message stores that persist a stream — the file store (a segmented append-only log with a
// checksum per record, an index and recovery that cuts a torn tail), and the SQL stores.
//
// Every store implements `MessageStore` from StorkStreaming and passes the same contract tests
// (Tests/StorkStreamingTests) as `MemoryMessageStore`.
