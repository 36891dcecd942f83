import Logging
import StorkCore

// MARK: - MetadataDirectory

/// The metadata records of a file store: one small file per key in `<store>/meta`, each replaced atomically
/// (temporary file, fsync, rename, fsync of the directory), so that a crash leaves the old or the new value.
///
/// A file is named `k-<hex of the key's UTF-8>.meta`, or `h-<two 64-bit hashes>.meta` when that name would be too
/// long for a file system; either way the file also holds the key, which is what `load` trusts. Layout
/// (little-endian): `"SKM1"`, key length u32, key, value, CRC-32C of everything before it (u32).
struct MetadataDirectory {
    static let magic: UInt32 = 0x314D_4B53  // "SKM1"
    let path: String

    init(storeDirectory: String) {
        self.path = storeDirectory + "/meta"
    }

    static func fileName(for key: String) -> String {
        let utf8 = Array(key.utf8)
        if utf8.count <= 100 { return "k-" + Self.hex(utf8) + ".meta" }
        let first = StableHash.fnv1a64(key)
        let second = StableHash.mix64(StableHash.fnv1a64(key, continuing: 0x9E37_79B9_7F4A_7C15))
        return "h-" + Self.hex(first) + Self.hex(second) + ".meta"
    }

    /// Every record, skipping (with an error in the log) files that are damaged.
    func load(logger: Logger) throws -> [String: [UInt8]] {
        var metadata: [String: [UInt8]] = [:]
        for name in try FileSystem.contentsOfDirectory(self.path) {
            let file = "\(self.path)/\(name)"
            if name.hasSuffix(".tmp") {
                try FileSystem.removeFile(file)
                continue
            }
            guard name.hasSuffix(".meta"), let bytes = try FileSystem.contents(of: file) else { continue }
            guard let (key, value) = Self.decode(bytes), Self.fileName(for: key) == name else {
                logger.error(
                    "file store metadata record is damaged, ignored",
                    metadata: ["stork.store.file": "\(file)"]
                )
                continue
            }
            metadata[key] = value
        }
        return metadata
    }

    func save(key: String, value: [UInt8]?) throws {
        let file = "\(self.path)/\(Self.fileName(for: key))"
        guard let value else {
            try FileSystem.removeFile(file)
            try FileSystem.syncDirectory(self.path)
            return
        }
        if file.hasPrefix("\(self.path)/h-"), let existing = try FileSystem.contents(of: file),
            let (existingKey, _) = Self.decode(existing), existingKey != key
        {
            throw StorkError(.storeFailed, "metadata keys \(existingKey) and \(key) hash to the same file \(file)")
        }
        try FileSystem.writeAtomically(
            Self.encode(key: key, value: value),
            to: file,
            directory: self.path,
            durable: true
        )
    }

    static func encode(key: String, value: [UInt8]) -> [UInt8] {
        let keyBytes = Array(key.utf8)
        var writer = ByteWriter()
        writer.bytes.reserveCapacity(12 + keyBytes.count + value.count)
        writer.append(Self.magic)
        writer.append(UInt32(keyBytes.count))
        writer.bytes.append(contentsOf: keyBytes)
        writer.bytes.append(contentsOf: value)
        writer.append(CRC32C.checksum(writer.bytes))
        return writer.bytes
    }

    static func decode(_ bytes: [UInt8]) -> (key: String, value: [UInt8])? {
        guard bytes.count >= 12 else { return nil }
        let stored = bytes.withUnsafeBytes {
            UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: bytes.count - 4, as: UInt32.self))
        }
        let computed = bytes.withUnsafeBytes { CRC32C.checksum(UnsafeRawBufferPointer(rebasing: $0.dropLast(4))) }
        guard stored == computed else { return nil }
        var reader = ByteReader(bytes: bytes, end: bytes.count - 4)
        guard reader.read(UInt32.self) == Self.magic, let keyLength = reader.read(UInt32.self),
            let key = reader.readBytes(Int(keyLength))
        else { return nil }
        return (String(decoding: key, as: UTF8.self), Array(bytes[reader.position..<(bytes.count - 4)]))
    }

    private static func hex(_ bytes: [UInt8]) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var result: [UInt8] = []
        result.reserveCapacity(bytes.count * 2)
        for byte in bytes {
            result.append(digits[Int(byte >> 4)])
            result.append(digits[Int(byte & 0x0F)])
        }
        return String(decoding: result, as: UTF8.self)
    }

    private static func hex(_ value: UInt64) -> String {
        withUnsafeBytes(of: value.bigEndian) { Self.hex(Array($0)) }
    }
}
