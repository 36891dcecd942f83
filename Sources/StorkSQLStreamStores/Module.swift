// StorkSQLStreamStores: message stores in SQL databases — SQLite (one file holds many streams) and PostgreSQL (a
// database shared by streams and nodes).
//
// Both implement `MessageStore` from StorkStreaming and pass the same contract checks as `MemoryMessageStore` and
// the file store (Tests/StorkSQLStreamStoresTests). The schema and the design are in StorkSQLStreamStores.docc.
